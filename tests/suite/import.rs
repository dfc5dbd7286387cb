//! `alexnet-cli import`: a peer's weights give the peer's outputs. The torchvision fixture
//! (tests/fixtures/import/, written by scripts/make_import_fixtures.py) is a narrow net of
//! torchvision's alexnet structure saved by torch.save, with the logits PyTorch computed for two
//! fixed images under torchvision's preprocessing.

use std::path::{Path, PathBuf};
use std::process::Command;

use alexnet::arch::{summary_table, ArchConfig, Kind, Net};
use alexnet::checkpoint::Checkpoint;
use alexnet::data::{centre_crop, Stats};
use alexnet::engine::cpu::CpuEngine;
use alexnet::import::{import, read_class_names, torch::read_state_dict, ImportArgs, Peer};
use alexnet::model::{Init, Model};
use alexnet::parallel::Network;

const BIN: &str = env!("CARGO_BIN_EXE_alexnet-cli");
const SIDE: usize = 224;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(name)
}

fn import_to(file: &Path, out: &Path) -> alexnet::Result<Checkpoint> {
    import(&ImportArgs {
        from: Peer::Torchvision,
        file: file.to_path_buf(),
        mean: None,
        out: out.to_path_buf(),
        class_names: None,
    })
}

/// The fixture's images, as scripts/make_import_fixtures.py's `pixels` makes them.
fn pixels(image: usize) -> Vec<u8> {
    (0..3 * SIDE * SIDE)
        .map(|i| ((i * 7919 + 104729 * image + (i / SIDE) * 31) % 256) as u8)
        .collect()
}

/// Our preprocessing of a 224x224 image as predict applies it: placed in the middle of the
/// checkpoint's mean-image side (what resizing gives), then the checkpoint's centre crop.
fn preprocess(px: &[u8], ckpt: &Checkpoint) -> Vec<f32> {
    let side = ckpt.mean_side;
    let off = (side - SIDE) / 2;
    let mut img = vec![0u8; 3 * side * side];
    for c in 0..3 {
        for y in 0..SIDE {
            let src = &px[(c * SIDE + y) * SIDE..][..SIDE];
            img[(c * side + y + off) * side + off..][..SIDE].copy_from_slice(src);
        }
    }
    let stats = Stats {
        side,
        mean: ckpt.mean.clone().unwrap(),
        eigval: [0.0; 3],
        eigvec: [[0.0; 3]; 3],
    };
    let mut out = vec![0.0; 3 * SIDE * SIDE];
    centre_crop(&img, side, SIDE, &stats, &mut out);
    out
}

fn torch_logits() -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(fixture("torchvision_small_logits.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(v["logits"].clone()).unwrap()
}

/// The imported net's logits for the fixture's two images.
fn our_logits(ckpt: &Checkpoint) -> Vec<f32> {
    let e = CpuEngine::new(2).unwrap();
    let mut model = Model::new(&e, ckpt.arch.clone(), Init::Paper, 0, 2).unwrap();
    for t in &ckpt.params {
        model
            .write_param(&e, &t.name, &t.shape, &t.data, false)
            .unwrap();
    }
    let images: Vec<f32> = [0, 1]
        .iter()
        .flat_map(|&i| preprocess(&pixels(i), ckpt))
        .collect();
    model.forward(&e, &images, None).unwrap();
    model.activation(&e, "fc8").unwrap()
}

/// Ours and PyTorch's forward are both f32 with different summation orders (and ours has
/// torchvision's 1/std folded into conv1, rounding once more). Each layer's sums have at most
/// 576 terms (fc6), so rounding moves an output by at most ~576 * 6e-8 = 3.5e-5 of the sum of
/// its terms' magnitudes in the worst case, ~1.4e-6 typically (sqrt(576) * 6e-8), over eight
/// layers. 1e-4 of the largest logit sits above that worst case, and a wrong mapping (a
/// transposed kernel, swapped channels, an unscaled input) moves logits by O(1).
const TOLERANCE: f64 = 1e-4;

#[test]
fn torchvision_import_gives_pytorchs_logits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tv.safetensors");
    let ckpt = import_to(&fixture("torchvision_small.pth"), &out).unwrap();
    assert_eq!(ckpt.arch.input_size, 224);
    assert_eq!(ckpt.arch.classes, 10);
    assert!(!ckpt.arch.dropout_paper_scaling);
    assert_eq!(ckpt.mean_side, 256, "torchvision resizes to 256");
    // What was written is what predict will read.
    let loaded = Checkpoint::load(&out).unwrap();
    assert_eq!(loaded.params, ckpt.params);
    // The whole table, init std values included: f64s survive the JSON exactly.
    assert_eq!(loaded.arch, ckpt.arch);

    let ours = our_logits(&loaded);
    let theirs = torch_logits();
    let scale = theirs.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 1.0, "the fixture's logits are not degenerate");
    let worst = ours
        .iter()
        .zip(theirs.iter().flatten())
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= TOLERANCE * scale,
        "max |ours - pytorch| = {worst:e} (largest logit {scale}); ours {ours:?}"
    );
}

#[test]
fn a_safetensors_state_dict_imports_the_same() {
    let sd = read_state_dict(&fixture("torchvision_small.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("sd.safetensors");
    let views: Vec<(String, safetensors::tensor::TensorView)> = sd
        .iter()
        .map(|(name, (shape, data))| {
            let bytes: &[u8] = bytemuck::cast_slice(data);
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &st).unwrap();
    let a = import_to(&fixture("torchvision_small.pth"), &dir.path().join("a")).unwrap();
    let b = import_to(&st, &dir.path().join("b")).unwrap();
    assert_eq!(a.params, b.params);
    assert_eq!(a.arch, b.arch);
}

#[test]
fn pickled_code_truncated_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let err = |file: &Path| import_to(file, &out).unwrap_err().to_string();

    // A whole pickled model names its Python class: refused, never run.
    let e = err(&fixture("torchvision_small_whole_model.pth"));
    assert!(e.contains("AlexNet") && e.contains("refused"), "{e}");

    let bytes = std::fs::read(fixture("torchvision_small.pth")).unwrap();
    let cut = dir.path().join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&cut);
    assert!(e.contains("cut.pth") && e.contains("truncated"), "{e}");

    let foreign = fixture("torchvision_small_logits.json");
    let e = err(&foreign);
    assert!(e.contains("neither a PyTorch checkpoint"), "{e}");
    assert!(!out.exists(), "nothing is written for a refused file");
}

#[test]
fn a_state_dict_of_another_net_is_refused_by_name() {
    let mut sd = read_state_dict(&fixture("torchvision_small.pth")).unwrap();
    let w = sd.remove("features.3.weight").unwrap();
    let path = Path::new("resnet.pth");
    let e = alexnet::import::torchvision_checkpoint(&sd, path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no features.3.weight"), "{e}");
    sd.insert("features.3.weight".into(), w);
    sd.insert("layer1.0.conv1.weight".into(), (vec![1], vec![0.0]));
    let e = alexnet::import::torchvision_checkpoint(&sd, path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer1.0.conv1.weight"), "{e}");
}

#[test]
fn presets_are_the_peers_nets() {
    // torchvision's alexnet has 61,100,840 parameters; at 224 px pool5 gives 256x6x6, so its
    // adaptive average pool is the identity.
    let tv = ArchConfig::for_net(Net::Torchvision, None, None);
    let plan = tv.plan().unwrap();
    assert_eq!(plan.iter().map(|p| p.params).sum::<u64>(), 61_100_840);
    let pool5 = plan.iter().find(|p| p.layer.name == "pool5").unwrap();
    assert_eq!(
        (pool5.output.c, pool5.output.h, pool5.output.w),
        (256, 6, 6)
    );
    assert!(plan
        .iter()
        .all(|p| !matches!(p.layer.kind, Kind::Lrn { .. })));
    let names: Vec<&str> = plan.iter().map(|p| p.layer.name.as_str()).collect();
    let at = |n: &str| names.iter().position(|m| *m == n).unwrap();
    assert!(at("drop6") + 1 == at("fc6") && at("drop7") + 1 == at("fc7"));
    assert!(summary_table(&tv).unwrap().contains("adaptive avgpool 6x6"));
    let e = ArchConfig::for_net(Net::Torchvision, None, Some(256))
        .plan()
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer avgpool") && e.contains("7x7"), "{e}");

    // Caffe's bvlc_alexnet: the paper's shapes and groups, LRN over all maps with k = 1.
    let caffe = ArchConfig::for_net(Net::Caffe, None, None);
    let plan = caffe.plan().unwrap();
    assert_eq!(caffe.input_size, 227);
    assert_eq!(plan.iter().map(|p| p.params).sum::<u64>(), 60_965_224);
    let lrn: Vec<_> = plan
        .iter()
        .filter_map(|p| match p.layer.kind {
            Kind::Lrn {
                params,
                across_columns,
            } => Some((params.k, params.alpha_over_n, across_columns, p.input.c)),
            _ => None,
        })
        .collect();
    assert_eq!(lrn, [(1.0, true, true, 96), (1.0, true, true, 256)]);
}

#[test]
fn an_import_fine_tunes_like_init_from() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = import_to(&fixture("torchvision_small.pth"), &dir.path().join("tv")).unwrap();
    // Five classes of one's own: every tensor but fc8's is reused.
    let arch = ArchConfig {
        classes: 5,
        net: match &ckpt.arch.net {
            Net::Table(t) => {
                let mut t = t.clone();
                if let Some(Kind::Fc { out, .. }) = t.layers.last_mut().map(|l| &mut l.kind) {
                    *out = 5;
                }
                Net::Table(t)
            }
            other => other.clone(),
        },
        ..ckpt.arch.clone()
    };
    let engines = [CpuEngine::new(1).unwrap()];
    let mut net = Network::new(&engines, false, arch, Init::Paper, 1, 1).unwrap();
    let loaded =
        alexnet::train::load_weights(&engines, &mut net, &ckpt, alexnet::train::Load::FineTune)
            .unwrap();
    assert_eq!(loaded, 14);
}

#[test]
fn imagenet_class_names_when_the_shared_file_is_there() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/imagenet/synset_words.txt");
    if !path.exists() {
        eprintln!("skipped: {} is absent", path.display());
        return;
    }
    let names = read_class_names(&path, 1000).unwrap();
    assert!(names[0].starts_with("n01440764 tench"), "{}", names[0]);
    let e = read_class_names(&path, 10).unwrap_err().to_string();
    assert!(
        e.contains("1000 class names") && e.contains("10 classes"),
        "{e}"
    );
}

#[test]
fn the_cli_imports_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tv.safetensors");
    let run = |args: &[&str]| {
        let o = Command::new(BIN).args(args).output().unwrap();
        let text =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        (o.status.success(), text)
    };
    let fix = fixture("torchvision_small.pth");
    let (ok, text) = run(&[
        "import",
        "--from",
        "torchvision",
        fix.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        ok && text.contains("10 classes") && text.contains("224x224"),
        "{text}"
    );
    // A 256x256 picture with the fixture's image in the middle: the resize to the checkpoint's
    // 256 leaves it as it is and the centre crop takes the image back.
    let img = dir.path().join("a.png");
    let (px, off) = (pixels(0), (256 - SIDE) / 2);
    let picture = image::RgbImage::from_fn(256, 256, |x, y| {
        let (x, y) = (x as usize, y as usize);
        let inside = (off..off + SIDE).contains(&x) && (off..off + SIDE).contains(&y);
        image::Rgb(std::array::from_fn(|c| match inside {
            true => px[(c * SIDE + y - off) * SIDE + x - off],
            false => 0,
        }))
    });
    picture.save(&img).unwrap();
    let (ok, text) = run(&[
        "predict",
        "--checkpoint",
        out.to_str().unwrap(),
        "--top",
        "1",
        img.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    // PyTorch's top class for this image is 3, at softmax probability 99.43%.
    assert!(text.contains("99.43%") && text.contains("(3)"), "{text}");
}

// ---- Caffe ---------------------------------------------------------------------------------

mod caffe_fixture {
    use alexnet::import::caffe::{
        BlobProto, BlobShape, LayerParameter, NetParameter, V1LayerParameter,
    };
    use alexnet::rng::Rng;
    use alexnet_reference as r;

    /// A narrow net of bvlc_alexnet's structure: conv1..conv5 kernels, hidden units, classes.
    pub const WIDTHS: [usize; 6] = [8, 16, 24, 24, 16, 32];
    pub const CLASSES: usize = 10;
    pub const CROP: usize = 227;
    pub const SIDE: usize = 256;

    /// Caffe's blobs in Caffe's layout (BGR conv1), He-scaled so that LRN and every layer act.
    /// One learned layer: name, weight shape, weights, biases.
    pub type Layer = (&'static str, Vec<usize>, Vec<f32>, Vec<f32>);

    pub fn blobs(seed: u64) -> Vec<Layer> {
        let [c1, c2, c3, c4, c5, h] = WIDTHS;
        let shapes: [(&str, Vec<usize>); 8] = [
            ("conv1", vec![c1, 3, 11, 11]),
            ("conv2", vec![c2, c1 / 2, 5, 5]),
            ("conv3", vec![c3, c2, 3, 3]),
            ("conv4", vec![c4, c3 / 2, 3, 3]),
            ("conv5", vec![c5, c4 / 2, 3, 3]),
            ("fc6", vec![h, c5 * 36]),
            ("fc7", vec![h, h]),
            ("fc8", vec![CLASSES, h]),
        ];
        let mut rng = Rng::new(seed);
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let fan_in: usize = shape[1..].iter().product();
                let std = (2.0 / fan_in as f64).sqrt();
                let w = (0..shape.iter().product::<usize>())
                    .map(|_| (rng.normal() * std) as f32)
                    .collect();
                let b = (0..shape[0]).map(|_| (rng.normal() * 0.1) as f32).collect();
                (name, shape, w, b)
            })
            .collect()
    }

    pub fn blob(shape: &[usize], data: &[f32], legacy: bool) -> BlobProto {
        let mut b = BlobProto {
            data: data.to_vec(),
            ..Default::default()
        };
        if legacy {
            // V1 files: num/channels/height/width, fc weights as 1x1xOUTxIN
            let mut d = vec![1; 4 - shape.len()];
            d.extend(shape.iter().map(|&x| x as i32));
            (b.num, b.channels, b.height, b.width) =
                (Some(d[0]), Some(d[1]), Some(d[2]), Some(d[3]));
        } else {
            b.shape = Some(BlobShape {
                dim: shape.iter().map(|&d| d as i64).collect(),
            });
        }
        b
    }

    /// The net as a `.caffemodel`: the current `layer` list, or the legacy V1 `layers`.
    pub fn caffemodel(seed: u64, legacy: bool) -> Vec<u8> {
        use prost::Message;
        let mut net = NetParameter {
            name: Some("AlexNet".into()),
            ..Default::default()
        };
        // A data layer and a ReLU without blobs, as in a real file.
        for (name, shape, w, b) in blobs(seed) {
            let blobs = vec![blob(&shape, &w, legacy), blob(&[shape[0]], &b, legacy)];
            if legacy {
                let kind = if name.starts_with("conv") { 4 } else { 14 };
                net.layers.push(V1LayerParameter {
                    name: Some(name.into()),
                    r#type: Some(kind),
                    blobs,
                });
            } else {
                let kind = if name.starts_with("conv") {
                    "Convolution"
                } else {
                    "InnerProduct"
                };
                net.layer.push(LayerParameter {
                    name: Some(name.into()),
                    r#type: Some(kind.into()),
                    blobs,
                });
            }
        }
        net.encode_to_vec()
    }

    /// Caffe's BGR mean image [3, 256, 256] on 0..255.
    pub fn mean_bgr() -> Vec<f32> {
        (0..3 * SIDE * SIDE)
            .map(|i| 100.0 + 20.0 * ((i % 977) as f32 / 977.0) + (i / (SIDE * SIDE)) as f32 * 7.0)
            .collect()
    }

    /// An RGB picture [3, 256, 256].
    pub fn picture_rgb() -> Vec<u8> {
        (0..3 * SIDE * SIDE)
            .map(|i| ((i * 2654435761usize) >> 7) as u8)
            .collect()
    }

    /// Caffe's forward on its own conventions, in f64: the BGR picture minus the BGR mean, the
    /// central 227 crop, and the blobs as Caffe holds them.
    pub fn caffe_logits(seed: u64) -> Vec<f64> {
        let (rgb, mean) = (picture_rgb(), mean_bgr());
        let off = (SIDE - CROP) / 2;
        let plane = SIDE * SIDE;
        let mut x = Vec::with_capacity(3 * CROP * CROP);
        for c in 0..3 {
            let rgb_c = 2 - c; // BGR channel c is RGB channel 2 - c
            for y in 0..CROP {
                for xx in 0..CROP {
                    let at = (y + off) * SIDE + xx + off;
                    x.push(rgb[rgb_c * plane + at] as f64 - mean[c * plane + at] as f64);
                }
            }
        }
        let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let (mut c, mut hw) = (3, CROP);
        for (name, shape, w, b) in blobs(seed) {
            let (w, b) = (f64s(&w), f64s(&b));
            if let Some(layer) = name.strip_prefix("conv") {
                let (k, stride, pad, groups) = match layer {
                    "1" => (11, 4, 0, 1),
                    "2" => (5, 1, 2, 2),
                    "3" => (3, 1, 1, 1),
                    _ => (3, 1, 1, 2),
                };
                let s = r::Conv2d {
                    n: 1,
                    c_in: c,
                    h: hw,
                    w: hw,
                    c_out: shape[0],
                    kh: k,
                    kw: k,
                    stride,
                    pad,
                    groups,
                };
                x = r::relu_forward(&r::conv2d_forward(&s, &x, &w, &b));
                (c, hw) = (shape[0], s.h_out());
                if layer == "1" || layer == "2" {
                    let lrn = r::Lrn {
                        n: 1,
                        c,
                        h: hw,
                        w: hw,
                        groups: 1, // Caffe: one window over all the layer's maps
                        size: 5,
                        alpha: 1e-4,
                        beta: 0.75,
                        k: 1.0,
                        alpha_over_n: true,
                    };
                    x = r::lrn_forward(&lrn, &x);
                }
                if layer != "3" && layer != "4" {
                    let p = r::Pool {
                        n: 1,
                        c,
                        h: hw,
                        w: hw,
                        size: 3,
                        stride: 2,
                    };
                    x = r::maxpool_forward(&p, &x);
                    hw = p.h_out();
                }
            } else {
                let s = r::Fc {
                    n: 1,
                    d_in: x.len(),
                    d_out: shape[0],
                };
                x = r::fc_forward(&s, &x, &w, &b);
                if name != "fc8" {
                    x = r::relu_forward(&x);
                }
            }
        }
        x
    }
}

/// A little-endian `.npy` of float32 values.
fn npy(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    out
}

fn caffe_import(model: &Path, mean: Option<&Path>, out: &Path) -> alexnet::Result<Checkpoint> {
    import(&ImportArgs {
        from: Peer::Caffe,
        file: model.to_path_buf(),
        mean: mean.map(Path::to_path_buf),
        out: out.to_path_buf(),
        class_names: None,
    })
}

#[test]
fn caffe_import_gives_caffes_forward() {
    use caffe_fixture::*;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("net.caffemodel");
    std::fs::write(&model, caffemodel(5, false)).unwrap();
    let mean = dir.path().join("mean.npy");
    std::fs::write(&mean, npy(&[3, SIDE, SIDE], &mean_bgr())).unwrap();
    let ckpt = caffe_import(&model, Some(&mean), &dir.path().join("c.safetensors")).unwrap();
    assert_eq!(
        (ckpt.arch.input_size, ckpt.arch.classes, ckpt.mean_side),
        (227, 10, 256)
    );

    // Ours: the RGB picture through predict's centre crop with the checkpoint's mean.
    let stats = Stats {
        side: SIDE,
        mean: ckpt.mean.clone().unwrap(),
        eigval: [0.0; 3],
        eigvec: [[0.0; 3]; 3],
    };
    let mut x = vec![0.0; 3 * CROP * CROP];
    centre_crop(&picture_rgb(), SIDE, CROP, &stats, &mut x);
    let e = CpuEngine::new(2).unwrap();
    let mut m = Model::new(&e, ckpt.arch.clone(), Init::Paper, 0, 1).unwrap();
    for t in &ckpt.params {
        m.write_param(&e, &t.name, &t.shape, &t.data, false)
            .unwrap();
    }
    m.forward(&e, &x, None).unwrap();
    let ours = m.activation(&e, "fc8").unwrap();
    let theirs = caffe_logits(5);
    let scale = theirs.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    assert!(
        scale > 1.0,
        "the fixture's logits are not degenerate: {theirs:?}"
    );
    // f32 against f64 through sums of at most 1,089 terms (conv2's 8 x 5 x 5... fc6's 576):
    // rounding stays near 1e-6 of the scale; see TOLERANCE. A channel left in BGR order, an
    // LRN within columns or a mean not reversed moves logits by O(1).
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= TOLERANCE * scale,
        "max |ours - caffe| = {worst:e} (largest logit {scale}); ours {ours:?}, caffe {theirs:?}"
    );
}

#[test]
fn caffe_v1_layers_binaryproto_and_channel_means_import_alike() {
    use caffe_fixture::*;
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let (new, old) = (
        dir.path().join("new.caffemodel"),
        dir.path().join("old.caffemodel"),
    );
    std::fs::write(&new, caffemodel(6, false)).unwrap();
    std::fs::write(&old, caffemodel(6, true)).unwrap();
    let proto = dir.path().join("mean.binaryproto");
    let m = blob(&[1, 3, SIDE, SIDE], &mean_bgr(), false);
    std::fs::write(&proto, m.encode_to_vec()).unwrap();
    let a = caffe_import(&new, Some(&proto), &dir.path().join("a")).unwrap();
    let b = caffe_import(&old, Some(&proto), &dir.path().join("b")).unwrap();
    assert_eq!(a.params, b.params);
    assert_eq!(a.mean, b.mean);
    // The BGR mean is stored RGB: our channel 0 is Caffe's channel 2.
    let plane = SIDE * SIDE;
    assert_eq!(a.mean.as_ref().unwrap()[..plane], mean_bgr()[2 * plane..]);

    let channels = dir.path().join("bgr.npy");
    std::fs::write(&channels, npy(&[3], &[104.0, 117.0, 123.0])).unwrap();
    let c = caffe_import(&new, Some(&channels), &dir.path().join("c")).unwrap();
    let mean = c.mean.unwrap();
    assert_eq!(
        (mean[0], mean[plane], mean[2 * plane]),
        (123.0, 117.0, 104.0)
    );
}

#[test]
fn caffe_without_a_mean_refuses_to_predict_naming_the_mean() {
    use caffe_fixture::*;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("net.caffemodel");
    std::fs::write(&model, caffemodel(7, false)).unwrap();
    let out = dir.path().join("c.safetensors");
    caffe_import(&model, None, &out).unwrap();
    let img = dir.path().join("a.png");
    image::RgbImage::new(300, 300).save(&img).unwrap();
    let o = Command::new(BIN)
        .args([
            "predict",
            "--checkpoint",
            out.to_str().unwrap(),
            img.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        text.contains("--mean") && text.contains("ilsvrc_2012_mean.npy"),
        "{text}"
    );

    // Truncated and foreign files.
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() - 1000]).unwrap();
    let e = caffe_import(&model, None, &out).unwrap_err().to_string();
    assert!(
        e.contains("net.caffemodel") && e.contains("truncated"),
        "{e}"
    );
    let e = caffe_import(&fixture("torchvision_small.pth"), None, &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("torchvision_small.pth"), "{e}");
}
