//! Checkpoint files: bit-exact round trips, PyTorch names and layouts, clear errors for mismatched,
//! truncated and garbage files, atomic saves that survive SIGKILL, and the directory's keep-N/best
//! policy.
//!
//! Files use the small config (10 classes, 67x67 input): ~20 M parameters, 80 MB, dominated by
//! fc7's fixed 4096x4096. One paper-sized file would be 244 MB, so none is written here; the
//! paper's names and shapes are checked through `param_shapes`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alexnet::arch::{ArchConfig, Net};
use alexnet::checkpoint::{Checkpoint, CheckpointDir, NamedTensor, TrainState};
use alexnet::rng::{self, Rng};
use alexnet::Error;
use safetensors::SafeTensors;

fn small_arch() -> ArchConfig {
    ArchConfig {
        classes: 10,
        input_size: 67,
        ..Default::default()
    }
}

fn train_state(step: u64) -> TrainState {
    TrainState {
        step,
        epoch: 3,
        batch_in_epoch: 17,
        lr: 0.001,
        best_val_top1: Some(0.4217),
        epochs_since_best: 2,
        lr_drops: 1,
        rng: Rng {
            seed: 0xdead_beef_1234_5678,
            counter: u64::MAX - 5,
        },
        dropout_seed_base: 0xffff_ffff_ffff_fff1,
        data_seed: 42,
        threads: 2,
        settings: Some(serde_json::json!({"lr": 0.01})),
    }
}

/// Random (NaN-free) weights, momentum, mean image and PCA for `arch`.
fn random_ckpt(arch: &ArchConfig, seed: u64, with_momentum: bool) -> Checkpoint {
    let shapes = Checkpoint::param_shapes(arch).unwrap();
    let mut k = 0u64;
    let mut fill = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                k += 1;
                rng::uniform_at(seed, k) * 2.0 - 1.0
            })
            .collect()
    };
    let mut tensors = |shapes: &[(String, Vec<usize>)]| -> Vec<NamedTensor> {
        shapes
            .iter()
            .map(|(n, s)| NamedTensor::new(n.clone(), s.clone(), fill(s.iter().product())))
            .collect()
    };
    let params = tensors(&shapes);
    let momentum = if with_momentum {
        tensors(&shapes)
    } else {
        Vec::new()
    };
    let side = 8;
    let mean = fill(3 * side * side);
    let e = fill(12);
    let mut extra = BTreeMap::new();
    extra.insert("data_dir".to_string(), "/data/ilsvrc2012".to_string());
    extra.insert(
        "command".to_string(),
        "alexnet-cli train --epochs 90 \"x\"".to_string(),
    );
    Checkpoint {
        arch: arch.clone(),
        class_names: (0..arch.classes)
            .map(|c| format!("n{c:08} class {c}"))
            .collect(),
        mean: Some(mean),
        mean_side: side,
        eigval: Some([e[0], e[1], e[2]]),
        eigvec: Some([[e[3], e[4], e[5]], [e[6], e[7], e[8]], [e[9], e[10], e[11]]]),
        params,
        momentum,
        train_state: Some(train_state(1234)),
        extra_metadata: extra,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_tensors_bit_exact(a: &[NamedTensor], b: &[NamedTensor]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.shape, y.shape, "{}", x.name);
        assert!(bits(&x.data) == bits(&y.data), "{} differs", x.name);
    }
}

fn assert_bit_exact(a: &Checkpoint, b: &Checkpoint) {
    assert_tensors_bit_exact(&a.params, &b.params);
    assert_tensors_bit_exact(&a.momentum, &b.momentum);
    assert_eq!(a.arch, b.arch);
    assert_eq!(a.class_names, b.class_names);
    assert_eq!(a.mean_side, b.mean_side);
    assert_eq!(a.mean.as_deref().map(bits), b.mean.as_deref().map(bits));
    assert_eq!(a.eigval.map(|v| bits(&v)), b.eigval.map(|v| bits(&v)));
    let flat = |v: [[f32; 3]; 3]| bits(&v.concat());
    assert_eq!(a.eigvec.map(flat), b.eigvec.map(flat));
    assert_eq!(a.train_state, b.train_state);
    assert_eq!(a.extra_metadata, b.extra_metadata);
}

fn load_err(path: &Path) -> String {
    match Checkpoint::load(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e @ Error::Checkpoint { .. }) => e.to_string(),
        Err(e) => panic!("expected Error::Checkpoint, got {e:?}"),
    }
}

/// A tensor as the test edits it: name, dtype, shape, little-endian bytes.
type RawTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Rewrites a checkpoint file through the safetensors crate, letting `edit` change the tensor
/// list and the metadata (how a file from another tool or a hand edit would look).
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut Vec<RawTensor>, &mut HashMap<String, String>),
) {
    let bytes = fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut tensors: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut tensors, &mut meta);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            let v = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (n.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, Some(meta), dst).unwrap();
}

#[test]
fn paper_param_names_and_shapes_are_pytorchs() {
    let shapes = Checkpoint::param_shapes(&ArchConfig::default()).unwrap();
    let expect: Vec<(&str, Vec<usize>)> = vec![
        ("conv1.weight", vec![96, 3, 11, 11]),
        ("conv1.bias", vec![96]),
        ("conv2.weight", vec![256, 48, 5, 5]),
        ("conv2.bias", vec![256]),
        ("conv3.weight", vec![384, 256, 3, 3]),
        ("conv3.bias", vec![384]),
        ("conv4.weight", vec![384, 192, 3, 3]),
        ("conv4.bias", vec![384]),
        ("conv5.weight", vec![256, 192, 3, 3]),
        ("conv5.bias", vec![256]),
        ("fc6.weight", vec![4096, 9216]),
        ("fc6.bias", vec![4096]),
        ("fc7.weight", vec![4096, 4096]),
        ("fc7.bias", vec![4096]),
        ("fc8.weight", vec![1000, 4096]),
        ("fc8.bias", vec![1000]),
    ];
    let got: Vec<(&str, Vec<usize>)> = shapes
        .iter()
        .map(|(n, s)| (n.as_str(), s.clone()))
        .collect();
    assert_eq!(got, expect);
    let total: usize = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(total, 60_965_224);

    // The one-column net is ungrouped: conv2 reads all 48 of conv1's maps.
    let one = Checkpoint::param_shapes(&ArchConfig {
        net: Net::OneColumn,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(one[2], ("conv2.weight".to_string(), vec![128, 48, 5, 5]));
}

#[test]
fn round_trip_is_bit_exact_and_readable_as_plain_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let ckpt = random_ckpt(&small_arch(), 7, true);
    ckpt.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_bit_exact(&ckpt, &back);
    assert_eq!(back, ckpt);

    // What a PyTorch user sees: state-dict names with PyTorch layouts, the extras under prefixes.
    let bytes = fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let shape = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    assert_eq!(shape("conv2.weight"), vec![256, 48, 5, 5]);
    assert_eq!(shape("fc6.weight"), vec![4096, 256]);
    assert_eq!(shape("fc8.bias"), vec![10]);
    assert_eq!(shape("momentum.conv1.weight"), vec![96, 3, 11, 11]);
    assert_eq!(shape("data.mean"), vec![3, 8, 8]);
    assert_eq!(shape("data.pca_eigvec"), vec![3, 3]);
    assert_eq!(st.len(), 16 * 2 + 3);
    let first = &st.tensor("conv1.weight").unwrap().data()[..4];
    assert_eq!(
        f32::from_le_bytes(first.try_into().unwrap()).to_bits(),
        ckpt.params[0].data[0].to_bits()
    );
    // No temporary file is left behind.
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["ckpt.safetensors".to_string()]);
}

#[test]
fn inference_only_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let arch = ArchConfig {
        net: Net::OneColumn,
        ..small_arch()
    };
    let mut ckpt = random_ckpt(&arch, 9, false);
    ckpt.mean = None;
    ckpt.eigval = None;
    ckpt.eigvec = None;
    ckpt.train_state = None;
    ckpt.extra_metadata.clear();
    ckpt.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert!(back.momentum.is_empty() && back.train_state.is_none() && back.mean.is_none());
    assert_bit_exact(&ckpt, &back);
}

#[test]
fn a_net_file_s_table_round_trips_and_defines_the_tensors() {
    // A net no preset has (tanh, average pooling, LRN across all maps, its own init): the file
    // must carry the whole table, since nothing else could rebuild it.
    let text = r#"
        name = "tiny"
        [[layer]]
        name = "features"
        kind = "conv"
        out = 6
        size = 3
        init_std = 0.2
        init_bias = 0.5
        [[layer]]
        name = "squash"
        kind = "tanh"
        [[layer]]
        name = "norm"
        kind = "lrn"
        size = 3
        k = 1.0
        alpha_over_n = true
        across_columns = true
        [[layer]]
        name = "mean"
        kind = "avg-pool"
        size = 2
        stride = 2
        [[layer]]
        name = "classifier"
        kind = "fc"
        out = 4
    "#;
    let table = alexnet::netfile::parse(text, false, "tiny").unwrap();
    let arch = ArchConfig::for_net(Net::Table(table), None, Some(9));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let ckpt = random_ckpt(&arch, 5, true);
    let names: Vec<&str> = ckpt.params.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "features.weight",
            "features.bias",
            "classifier.weight",
            "classifier.bias"
        ]
    );
    // 9 px: 7x7 after the 3x3 kernel, 3x3 after the 2/2 pool: 6*3*3 = 54 inputs to the classifier.
    assert_eq!(ckpt.param("classifier.weight").unwrap().shape, vec![4, 54]);
    ckpt.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_bit_exact(&ckpt, &back);
    assert_eq!(back.arch, arch);
}

#[test]
fn format_1_files_still_load() {
    // What version 1 wrote for `alexnet.arch`: the preset by name, the LRN constants as five
    // loose fields (here Caffe's alpha/n convention, which must survive the conversion).
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("v2.safetensors");
    let arch = ArchConfig {
        lrn: alexnet::engine::LrnParams {
            alpha_over_n: true,
            ..alexnet::engine::LrnParams::PAPER
        },
        dropout: 0.25,
        ..small_arch()
    };
    let ckpt = random_ckpt(&arch, 4, false);
    ckpt.save(&v2).unwrap();
    let v1 = dir.path().join("v1.safetensors");
    rewrite(&v2, &v1, |_, meta| {
        meta.insert("alexnet.version".into(), "1".into());
        let old = r#"{"preset":"Paper","classes":10,"input_size":67,"lrn_size":5,
            "lrn_alpha":0.0001,"lrn_beta":0.75,"lrn_k":2.0,"lrn_alpha_over_n":true,
            "dropout":0.25,"dropout_paper_scaling":true,
            "cross_column":["conv3","fc6","fc7","fc8"]}"#;
        meta.insert("alexnet.arch".into(), old.into());
    });
    let back = Checkpoint::load(&v1).unwrap();
    assert_eq!(back.arch, arch);
    assert_bit_exact(&ckpt, &back);
    // A version this build does not know is refused, saying which it reads.
    let v9 = dir.path().join("v9.safetensors");
    rewrite(&v2, &v9, |_, meta| {
        meta.insert("alexnet.version".into(), "9".into());
    });
    let err = load_err(&v9);
    assert!(
        err.contains("format version 9") && err.contains("1 and 2"),
        "{err}"
    );
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    random_ckpt(&small_arch(), 3, false).save(&good).unwrap();

    // The file's architecture says 11 classes, its fc8 has 10 rows.
    let bad = dir.path().join("classes.safetensors");
    rewrite(&good, &bad, |_, meta| {
        let arch = ArchConfig {
            classes: 11,
            ..small_arch()
        };
        meta.insert("alexnet.arch".into(), serde_json::to_string(&arch).unwrap());
    });
    let err = load_err(&bad);
    assert!(
        err.contains("fc8.weight") && err.contains("[10, 4096]") && err.contains("[11, 4096]"),
        "{err}"
    );

    // A tensor with a shape no architecture row gives.
    let bad = dir.path().join("conv.safetensors");
    rewrite(&good, &bad, |tensors, _| {
        tensors.retain(|t| t.0 != "conv2.weight");
        let bytes = vec![0u8; 256 * 96 * 25 * 4];
        tensors.push((
            "conv2.weight".into(),
            safetensors::Dtype::F32,
            vec![256, 96, 5, 5],
            bytes,
        ));
    });
    let err = load_err(&bad);
    assert!(
        err.contains("conv2.weight")
            && err.contains("[256, 96, 5, 5]")
            && err.contains("[256, 48, 5, 5]"),
        "{err}"
    );

    // Missing and extra tensors.
    let bad = dir.path().join("missing.safetensors");
    rewrite(&good, &bad, |tensors, _| {
        tensors.retain(|t| t.0 != "conv3.bias")
    });
    let err = load_err(&bad);
    assert!(
        err.contains("conv3.bias") && err.contains("missing"),
        "{err}"
    );
    let bad = dir.path().join("extra.safetensors");
    rewrite(&good, &bad, |tensors, _| {
        tensors.push((
            "fc9.weight".into(),
            safetensors::Dtype::F32,
            vec![4],
            vec![0u8; 16],
        ));
    });
    let err = load_err(&bad);
    assert!(
        err.contains("fc9.weight") && err.contains("unexpected"),
        "{err}"
    );

    // A wrong dtype.
    let bad = dir.path().join("dtype.safetensors");
    rewrite(&good, &bad, |tensors, _| {
        tensors.retain(|t| t.0 != "fc8.bias");
        tensors.push((
            "fc8.bias".into(),
            safetensors::Dtype::F16,
            vec![10],
            vec![0u8; 20],
        ));
    });
    let err = load_err(&bad);
    assert!(err.contains("fc8.bias") && err.contains("F16"), "{err}");

    // A plain safetensors file without our metadata.
    let bad = dir.path().join("bare.safetensors");
    rewrite(&good, &bad, |_, meta| meta.clear());
    let err = load_err(&bad);
    assert!(
        err.contains("missing") && err.contains("not an alexnet-rs checkpoint"),
        "{err}"
    );

    // One class name per class (or none at all).
    let mut named = random_ckpt(&small_arch(), 3, false);
    named.class_names.truncate(3);
    let err = named
        .save(&dir.path().join("names.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("3 class names") && err.contains("10 classes"),
        "{err}"
    );

    // Saving refuses a mismatched checkpoint before touching the disk.
    let mut ckpt = random_ckpt(&small_arch(), 3, false);
    ckpt.params.last_mut().unwrap().shape = vec![11];
    let target = dir.path().join("never.safetensors");
    let err = ckpt.save(&target).unwrap_err().to_string();
    assert!(err.contains("fc8.bias"), "{err}");
    assert!(!target.exists());
}

#[test]
fn truncated_and_garbage_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    random_ckpt(&small_arch(), 5, false).save(&good).unwrap();
    let bytes = fs::read(&good).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;

    // Cut inside the tensor data, inside the JSON header, inside the length field, and empty.
    for (what, keep) in [
        ("data", bytes.len() / 2),
        ("data end", bytes.len() - 1),
        ("header", header_end / 2),
        ("length field", 5),
        ("empty", 0),
    ] {
        let p = dir.path().join(format!("cut-{keep}.safetensors"));
        fs::write(&p, &bytes[..keep]).unwrap();
        let err = load_err(&p);
        assert!(err.contains("truncated"), "{what}: {err}");
        assert!(err.contains(&p.display().to_string()), "{what}: {err}");
    }

    // Random bytes, and a text file.
    let p = dir.path().join("noise.safetensors");
    fs::write(
        &p,
        (0..4096u64)
            .map(|i| rng::hash(1, i) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let err = load_err(&p);
    assert!(err.contains("not a safetensors file"), "{err}");
    let p = dir.path().join("text.safetensors");
    fs::write(&p, "this is a README, not a checkpoint\n".repeat(20)).unwrap();
    let err = load_err(&p);
    assert!(err.contains("not a safetensors file"), "{err}");

    // A missing file is an I/O error naming it.
    let p = dir.path().join("absent.safetensors");
    let err = Checkpoint::load(&p).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("absent"),
        "{err}"
    );
}

const CHILD_ENV: &str = "ALEXNET_CHECKPOINT_KILL_TEST_PATH";

/// The writer `atomic_save_survives_sigkill` kills: saves ever newer checkpoints over one path.
/// Each save's first weight equals its step, so a reader can tell a whole file from a mixed one.
#[cfg(unix)]
#[test]
#[ignore = "child process of atomic_save_survives_sigkill, which runs it"]
fn child_saves_until_killed() {
    // Run by hand (e.g. `--include-ignored`) it has no file to write: nothing to do.
    let Ok(path) = std::env::var(CHILD_ENV).map(PathBuf::from) else {
        println!("{CHILD_ENV} not set: only atomic_save_survives_sigkill runs this");
        return;
    };
    let mut ckpt = random_ckpt(&small_arch(), 11, true);
    for step in 2.. {
        ckpt.train_state.as_mut().unwrap().step = step;
        ckpt.params[0].data[0] = step as f32;
        ckpt.save(&path).unwrap();
    }
}

#[cfg(unix)]
#[test]
fn atomic_save_survives_sigkill() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("last.safetensors");
    let mut first = random_ckpt(&small_arch(), 11, true);
    first.train_state.as_mut().unwrap().step = 1;
    first.params[0].data[0] = 1.0;
    first.save(&path).unwrap();
    let full_len = fs::metadata(&path).unwrap().len();

    let mut caught_mid_write = 0;
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "checkpoint::child_saves_until_killed",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let tmp = dir
            .path()
            .join(format!(".last.safetensors.tmp-{}", child.id()));
        // Rounds after the first wait for one of the child's saves to complete (the path gets a
        // new inode with each rename), so the kill also lands after a rename, not only before.
        let ino = |p: &Path| fs::metadata(p).map(|m| m.ino()).unwrap_or(0);
        let start_ino = ino(&path);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(Instant::now() < deadline, "the child never started writing");
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child exited on its own"
            );
            let renamed = round == 0 || ino(&path) != start_ino;
            let partial = fs::metadata(&tmp).is_ok_and(|m| m.len() > 0 && m.len() < full_len / 2);
            if renamed && partial {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();

        // The path holds one complete save: the parent's or one of the child's.
        let back = Checkpoint::load(&path).unwrap();
        let step = back.train_state.as_ref().unwrap().step;
        assert_eq!(back.params[0].data[0], step as f32, "file mixes two saves");
        assert_tensors_bit_exact(&back.params[1..], &first.params[1..]);
        assert_tensors_bit_exact(&back.momentum, &first.momentum);
        // A temp file cut by the kill is never mistaken for a checkpoint.
        if tmp.exists() {
            caught_mid_write += 1;
            let err = load_err(&tmp);
            assert!(err.contains("truncated"), "{err}");
        }
    }
    assert!(caught_mid_write > 0, "no kill landed mid-write");

    // Opening the directory removes the dead writers' temp files.
    CheckpointDir::new(dir.path(), 2).unwrap();
    let left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["last.safetensors".to_string()]);
}

#[test]
fn checkpoint_dir_keeps_last_n_and_best() {
    let dir = tempfile::tempdir().unwrap();
    // A temp file of a process that cannot exist (beyond Linux's pid_max) and one of ours.
    let stale = dir.path().join(".last.safetensors.tmp-999999999");
    let ours = dir
        .path()
        .join(format!(".best.safetensors.tmp-{}", std::process::id()));
    fs::write(&stale, b"partial").unwrap();
    fs::write(&ours, b"in progress").unwrap();
    let cd = CheckpointDir::new(dir.path(), 2).unwrap();
    assert!(!stale.exists() && ours.exists());
    fs::remove_file(&ours).unwrap();

    let mut ckpt = random_ckpt(&small_arch(), 13, false);
    for step in 1..=5u64 {
        ckpt.train_state.as_mut().unwrap().step = step;
        let is_best = step == 2 || step == 4;
        let written = cd.save(&ckpt, step * 100, is_best).unwrap();
        assert_eq!(written, cd.step_path(step * 100));
    }
    let steps: Vec<u64> = cd.steps().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![400, 500]);
    let step_of = |p: &Path| Checkpoint::load(p).unwrap().train_state.unwrap().step;
    assert_eq!(step_of(&cd.last()), 5);
    assert_eq!(step_of(&cd.best()), 4);
    assert_eq!(step_of(&cd.step_path(400)), 4);
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "best.safetensors",
            "last.safetensors",
            "step-400.safetensors",
            "step-500.safetensors"
        ]
    );

    // keep = 0: only last and best.
    let dir0 = tempfile::tempdir().unwrap();
    let cd0 = CheckpointDir::new(dir0.path(), 0).unwrap();
    let written = cd0.save(&ckpt, 7, true).unwrap();
    assert_eq!(written, cd0.last());
    assert!(cd0.steps().unwrap().is_empty());
    assert_eq!(step_of(&cd0.best()), 5);
}
