//! `alexnet-cli prepare` killed (SIGKILL) at seeded random moments while it replaces a complete
//! dataset: after every kill OUT opens and reads whole (the old dataset until the switch, the new
//! one after), and finishing the run gives exactly what an uninterrupted run gives.

use alexnet::data::{Dataset, PackedDataset, Stats};
use alexnet::rng::Rng;
use image::{Rgb, RgbImage};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

fn write_tree(root: &Path, classes: usize, per_class: u32, shade: u8) {
    for c in 0..classes {
        let dir = root.join(format!("class{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let img = RgbImage::from_fn(48 + i, 40, |x, y| {
                Rgb([(x * 5 + i * 9) as u8, (y * 6) as u8 ^ shade, (c * 80) as u8])
            });
            img.save(dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

fn run_prepare(src: &Path, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alexnet-cli"));
    cmd.arg("prepare")
        .arg(src)
        .arg(out)
        .args(["--side", "24", "--shard-size", "2", "--threads", "1"])
        .args(["--val-fraction", "0.25", "--overwrite", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

type Everything = (Vec<(Vec<u8>, u32)>, Vec<(Vec<u8>, u32)>, Stats);

fn read_split(out: &Path, split: &str) -> Result<Vec<(Vec<u8>, u32)>, String> {
    let ds = PackedDataset::open(out, split).map_err(|e| e.to_string())?;
    (0..ds.len())
        .map(|i| {
            let mut b = vec![0u8; 3 * ds.side() * ds.side()];
            let l = ds.read(i, &mut b).map_err(|e| e.to_string())?;
            Ok((b, l))
        })
        .collect()
}

fn read_everything(out: &Path) -> Result<Everything, String> {
    Ok((
        read_split(out, "train")?,
        read_split(out, "val")?,
        PackedDataset::stats(out).map_err(|e| e.to_string())?,
    ))
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn prepare_killed_at_random_moments_never_leaves_out_without_a_whole_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let (old_src, src) = (tmp.path().join("old"), tmp.path().join("src"));
    write_tree(&old_src, 2, 5, 0);
    write_tree(&src, 3, 12, 0x55);
    let (out, reference) = (tmp.path().join("out"), tmp.path().join("reference"));

    let t0 = Instant::now();
    assert!(run_prepare(&src, &reference).status().unwrap().success());
    let uninterrupted = t0.elapsed();
    let expected = read_everything(&reference).unwrap();
    let pristine = tmp.path().join("pristine");
    assert!(run_prepare(&old_src, &pristine).status().unwrap().success());
    let old = read_everything(&pristine).unwrap();
    assert_ne!(old.0, expected.0);

    let mut rng = Rng::new(12);
    let (mut before_switch, mut after_switch) = (0, 0);
    for trial in 0..4 {
        // OUT holds the complete old dataset; the run replacing it is killed twice (the second
        // time while resuming), then finished.
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        for (name, bytes) in listing(&pristine) {
            std::fs::write(out.join(name), bytes).unwrap();
        }
        for kill in 0..2 {
            let mut child = run_prepare(&src, &out).spawn().unwrap();
            std::thread::sleep(uninterrupted.mul_f64(rng.uniform()));
            // On Unix this is SIGKILL: no destructor, no cleanup, as in a crash or an OOM kill.
            child.kill().unwrap();
            child.wait().unwrap();
            let now = read_everything(&out).unwrap_or_else(|e| {
                panic!("trial {trial}, kill {kill}: OUT is not a whole dataset: {e}")
            });
            if now == old {
                before_switch += 1;
            } else {
                assert!(
                    now == expected,
                    "trial {trial}, kill {kill}: neither the old nor the new data"
                );
                after_switch += 1;
            }
        }
        assert!(run_prepare(&src, &out).status().unwrap().success());
        assert!(read_everything(&out).unwrap() == expected, "trial {trial}");
        // Byte for byte the same files (names carry content keys; meta.json holds no OUT path).
        assert!(listing(&out) == listing(&reference), "trial {trial}");
    }
    eprintln!(
        "uninterrupted run {uninterrupted:?}; kills before the switch {before_switch}, after {after_switch}"
    );
    assert!(before_switch > 0, "no kill interrupted a run");
}
