//! Decoding/resizing geometry and `prepare` end to end, on images the tests write themselves.

use alexnet::data::prepare::{parse_synsets, parse_val_labels};
use alexnet::data::{compute_stats, decode_resize, prepare, Dataset, PackedDataset, PrepareArgs};
use image::{ImageEncoder, Rgb, RgbImage};
use std::path::{Path, PathBuf};

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

fn jpeg(img: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
    if let Some(e) = exif {
        enc.set_exif_metadata(e).unwrap();
    }
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    out
}

fn px(chw: &[u8], side: usize, c: usize, y: usize, x: usize) -> u8 {
    chw[c * side * side + y * side + x]
}

#[test]
fn resize_is_an_exact_centre_crop_at_scale_one() {
    // 512x256: the shorter side is already 256, so the output is columns 128..384, exactly
    // (Catmull-Rom at integer positions has weights 0, 1, 0).
    let img = RgbImage::from_fn(512, 256, |x, y| {
        Rgb([
            (x % 251) as u8,
            (y % 253) as u8,
            ((x * 7 + y * 3) % 256) as u8,
        ])
    });
    let d = decode_resize(&png(&img), 256, true).unwrap();
    assert!(!d.upscaled);
    for y in 0..256 {
        for x in 0..256 {
            let p = img.get_pixel(x as u32 + 128, y as u32);
            for c in 0..3 {
                assert_eq!(px(&d.chw, 256, c, y, x), p.0[c], "c{c} y{y} x{x}");
            }
        }
    }
}

#[test]
fn resize_puts_a_known_square_where_it_belongs() {
    // 600x400 black with a white 160x160 square centred at (300, 200); side 200 halves the
    // image (k = 0.5) and crops columns 100..500, so the square maps to [60, 140)^2.
    let img = RgbImage::from_fn(600, 400, |x, y| {
        let inside = (220..380).contains(&x) && (120..280).contains(&y);
        Rgb(if inside { [255, 255, 255] } else { [0, 0, 0] })
    });
    let d = decode_resize(&png(&img), 200, true).unwrap();
    for y in 0..200 {
        for x in 0..200 {
            let v = px(&d.chw, 200, 1, y, x);
            // The antialiased kernel reaches 2 output pixels: exact values 3+ pixels from an edge.
            let (ix, iy) = ((63..137).contains(&x), (63..137).contains(&y));
            if ix && iy {
                assert_eq!(v, 255, "inside at y{y} x{x}");
            } else if !(57..143).contains(&x) || !(57..143).contains(&y) {
                assert_eq!(v, 0, "outside at y{y} x{x}");
            }
        }
    }
    // The edge is centred: column 60 is the first inside, so 59.5 is half way.
    let (a, b) = (
        px(&d.chw, 200, 0, 100, 59) as i32,
        px(&d.chw, 200, 0, 100, 60) as i32,
    );
    assert!(
        a < 128 && b > 128 && (a + b - 255).abs() <= 2,
        "edge {a} {b}"
    );
}

#[test]
fn odd_images_decode_greyscale_alpha_small_and_exif() {
    // Greyscale: R = G = B.
    let grey = image::GrayImage::from_fn(300, 280, |x, y| image::Luma([((x + y) % 256) as u8]));
    let mut g = Vec::new();
    image::codecs::png::PngEncoder::new(&mut g)
        .write_image(grey.as_raw(), 300, 280, image::ExtendedColorType::L8)
        .unwrap();
    let d = decode_resize(&g, 64, true).unwrap();
    assert!((0..64 * 64).all(|i| d.chw[i] == d.chw[4096 + i] && d.chw[i] == d.chw[8192 + i]));
    // Alpha over white: fully transparent red is white, half-transparent black is mid-grey.
    let rgba = image::RgbaImage::from_fn(100, 100, |x, _| {
        if x < 50 {
            image::Rgba([255, 0, 0, 0])
        } else {
            image::Rgba([0, 0, 0, 128])
        }
    });
    let mut a = Vec::new();
    image::codecs::png::PngEncoder::new(&mut a)
        .write_image(rgba.as_raw(), 100, 100, image::ExtendedColorType::Rgba8)
        .unwrap();
    let d = decode_resize(&a, 100, true).unwrap();
    assert_eq!(
        [0, 1, 2].map(|c| px(&d.chw, 100, c, 50, 10)),
        [255, 255, 255]
    );
    // 255 * (1 - 128/255) = 127 levels.
    assert_eq!(px(&d.chw, 100, 1, 50, 90), 127);
    // Smaller than the side: enlarged, flagged.
    let small = RgbImage::from_pixel(40, 30, Rgb([10, 20, 30]));
    let d = decode_resize(&png(&small), 64, true).unwrap();
    assert!(d.upscaled);
    assert_eq!(px(&d.chw, 64, 2, 32, 32), 30);
    // EXIF orientation 6 (rotate 90 degrees clockwise to display): stored 80x40 with red left,
    // blue right, displayed 40x80 with red on top.
    let img = RgbImage::from_fn(80, 40, |x, _| {
        Rgb(if x < 40 { [255, 0, 0] } else { [0, 0, 255] })
    });
    let exif = vec![
        0x4d, 0x4d, 0, 0x2a, 0, 0, 0, 8, // big-endian TIFF header, IFD at 8
        0, 1, // one entry
        0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, // Orientation, SHORT, 1 value: 6
        0, 0, 0, 0, // no next IFD
    ];
    let j = jpeg(&img, Some(exif));
    let rot = decode_resize(&j, 40, true).unwrap();
    assert_eq!((rot.width, rot.height), (40, 80));
    // JPEG is lossy: compare far from the colour edge with a wide margin.
    assert!(
        px(&rot.chw, 40, 0, 5, 20) > 200 && px(&rot.chw, 40, 2, 5, 20) < 60,
        "top is red"
    );
    assert!(
        px(&rot.chw, 40, 0, 35, 20) < 60 && px(&rot.chw, 40, 2, 35, 20) > 200,
        "bottom is blue"
    );
    let raw = decode_resize(&j, 40, false).unwrap();
    assert!(
        px(&raw.chw, 40, 0, 20, 5) > 200 && px(&raw.chw, 40, 2, 20, 35) > 200,
        "no-exif keeps left red, right blue"
    );
    // Not an image, truncated JPEG, empty file: errors with a reason, not a panic.
    assert!(decode_resize(b"hello, world", 64, true).is_err());
    assert!(decode_resize(&j[..j.len() / 3], 64, true).is_err());
    assert!(decode_resize(&[], 64, true).is_err());
}

#[test]
fn val_label_files_parse_in_every_supported_form() {
    let files: Vec<String> = ["v1.JPEG", "v2.JPEG", "v3.JPEG"].map(String::from).to_vec();
    let classes: Vec<String> = ["n01", "n02"].map(String::from).to_vec();
    let ok = |r: Vec<Result<u32, String>>| r.into_iter().map(|x| x.unwrap()).collect::<Vec<_>>();
    assert_eq!(
        ok(parse_val_labels("n02\nn01\nn02\n", &files, &classes).unwrap()),
        [1, 0, 1]
    );
    assert_eq!(
        ok(parse_val_labels("1\n0\n0", &files, &classes).unwrap()),
        [1, 0, 0]
    );
    assert_eq!(
        ok(parse_val_labels("v3.JPEG 0\nv1.JPEG 1\nv2.JPEG n02\n", &files, &classes).unwrap()),
        [1, 1, 0]
    );
    let csv =
        "ImageId,PredictionString\nv2,n01 1 2 3 4\nv1,n02 5 6 7 8 n02 1 1 2 2\nv3,n01 0 0 1 1\n";
    assert_eq!(
        ok(parse_val_labels(csv, &files, &classes).unwrap()),
        [1, 0, 0]
    );
    assert!(
        parse_val_labels("n01\nn02\n", &files, &classes).is_err(),
        "count mismatch"
    );
    let r = parse_val_labels("v1.JPEG n01\nv2.JPEG n99\n", &files, &classes).unwrap();
    assert_eq!(r[0], Ok(0));
    assert!(
        r[1].is_err() && r[2].is_err(),
        "unknown class; missing label"
    );
    assert!(
        parse_val_labels("v1.JPEG 5\n", &files, &classes).unwrap()[0].is_err(),
        "index out of range"
    );
}

#[test]
fn synset_words_parse() {
    let s = parse_synsets("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n");
    assert_eq!(s["n01440764"], "tench, Tinca tinca");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/imagenet/synset_words.txt"
    );
    match std::fs::read_to_string(path) {
        Err(_) => eprintln!("skipping the full synset_words.txt check: {path} is absent"),
        Ok(text) => {
            let s = parse_synsets(&text);
            assert_eq!(s.len(), 1000);
            assert_eq!(s["n01440764"], "tench, Tinca tinca");
        }
    }
}

/// A small ImageFolder tree with known content and every kind of bad input.
fn make_tree(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut good = Vec::new();
    let write = |p: &Path, bytes: &[u8]| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    for (label, class) in ["alpha", "beta"].iter().enumerate() {
        for i in 0..5u32 {
            let img = RgbImage::from_fn(40 + 3 * i, 36 + 5 * i, |x, y| {
                Rgb([
                    (x * 5 + i * 20) as u8,
                    (y * 6 + label as u32 * 90) as u8,
                    ((x + y) * 3) as u8,
                ])
            });
            let ext = if i % 2 == 0 { "png" } else { "PNG" };
            let p = root.join(class).join(format!("img{i}.{ext}"));
            write(&p, &png(&img));
            good.push((p, label as u32));
        }
    }
    let dup = std::fs::read(root.join("alpha/img0.png")).unwrap();
    write(&root.join("beta/copy_of_alpha0.png"), &dup);
    write(&root.join("beta/broken.jpg"), b"definitely not a jpeg");
    let j = jpeg(&RgbImage::from_pixel(50, 50, Rgb([9, 9, 9])), None);
    write(&root.join("beta/truncated.jpg"), &j[..j.len() / 2]);
    write(&root.join("alpha/notes.txt"), b"some text");
    std::fs::create_dir_all(root.join("gamma")).unwrap();
    good
}

fn args(src: &Path, out: &Path) -> PrepareArgs {
    PrepareArgs {
        src: src.to_path_buf(),
        out: out.to_path_buf(),
        val_dir: None,
        val_labels: None,
        val_fraction: None,
        synsets: None,
        strict: false,
        threads: 2,
        seed: 3,
        side: 32,
        shard_size: 3,
        no_exif: false,
        quiet: true,
        overwrite: false,
    }
}

fn all_images(ds: &dyn Dataset) -> Vec<(Vec<u8>, u32)> {
    (0..ds.len())
        .map(|i| {
            let mut b = vec![0u8; 3 * ds.side() * ds.side()];
            let l = ds.read(i, &mut b).unwrap();
            (b, l)
        })
        .collect()
}

#[test]
fn prepare_stores_exact_images_skips_bad_ones_and_computes_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    let good = make_tree(&src);
    let s = prepare(&args(&src, &out)).unwrap();
    assert_eq!(
        s.classes, 3,
        "alpha, beta, and the empty gamma keep their indices"
    );
    assert_eq!(s.empty_classes, ["gamma"]);
    assert_eq!(s.train, 10);
    assert_eq!(s.skipped, 3, "broken.jpg, truncated.jpg, notes.txt");
    assert_eq!(s.duplicates, 1);
    assert_eq!(s.upscaled, 0);
    let report = std::fs::read_to_string(out.join("report.tsv")).unwrap();
    for name in [
        "broken.jpg",
        "truncated.jpg",
        "notes.txt",
        "copy_of_alpha0.png",
        "gamma",
    ] {
        assert!(report.contains(name), "report lists {name}:\n{report}");
    }
    let ds = PackedDataset::open(&out, "train").unwrap();
    assert_eq!((ds.len(), ds.side(), ds.classes()), (10, 32, 3));
    assert_eq!(ds.class_names(), ["alpha", "beta", "gamma"]);
    // Stored images are exactly what load_image_file makes of each file, in plan order.
    for (i, (img, label)) in all_images(&ds).into_iter().enumerate() {
        let (path, l) = &good[i];
        assert_eq!(label, *l);
        assert_eq!(
            img,
            alexnet::data::load_image_file(path, 32).unwrap(),
            "{}",
            path.display()
        );
    }
    // Stored stats equal a fresh computation over the stored images.
    let stats = PackedDataset::stats(&out).unwrap();
    assert_eq!(stats, compute_stats(&ds, None).unwrap());
    assert!(
        PackedDataset::open(&out, "val").is_err(),
        "no val split was asked for"
    );

    let mut strict = args(&src, &tmp.path().join("strict"));
    strict.strict = true;
    assert!(prepare(&strict).is_err(), "--strict fails on bad input");
}

#[test]
fn prepare_resumes_after_an_interruption() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    make_tree(&src);
    let mut a = args(&src, &out);
    a.val_fraction = Some(0.4);
    let first = prepare(&a).unwrap();
    // 14 files in alpha/ and beta/; which land in val depends on the seed, not the total.
    assert_eq!(
        first.train + first.val + first.skipped + first.duplicates,
        14
    );
    assert!(first.val >= 2 && first.train >= 6, "{first:?}");
    let train = all_images(&PackedDataset::open(&out, "train").unwrap());
    let val = all_images(&PackedDataset::open(&out, "val").unwrap());
    let stats = PackedDataset::stats(&out).unwrap();
    // An interruption: the last shard never got renamed, another was cut short, meta.json absent.
    let shards: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .collect();
        v.sort();
        v
    };
    let total = shards.len();
    std::fs::rename(&shards[1], shards[1].with_extension("pack.tmp")).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shards[0])
        .unwrap();
    f.set_len(f.metadata().unwrap().len() - 100).unwrap();
    std::fs::remove_file(out.join("meta.json")).unwrap();
    assert!(
        PackedDataset::open(&out, "train").is_err(),
        "incomplete output is not a dataset"
    );
    let again = prepare(&a).unwrap();
    assert_eq!(again.shards_written, 2);
    assert_eq!(again.shards_reused, total - 2);
    assert_eq!(
        all_images(&PackedDataset::open(&out, "train").unwrap()),
        train
    );
    assert_eq!(all_images(&PackedDataset::open(&out, "val").unwrap()), val);
    assert_eq!(PackedDataset::stats(&out).unwrap(), stats);
    assert!(!std::fs::read_dir(&out).unwrap().any(|e| e
        .unwrap()
        .path()
        .to_string_lossy()
        .ends_with(".tmp")));
}

#[test]
fn prepare_reads_flat_val_with_labels_and_class_folder_val() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    make_tree(&src);
    let vdir = tmp.path().join("val");
    std::fs::create_dir_all(&vdir).unwrap();
    for (i, v) in [10u8, 200, 90].iter().enumerate() {
        std::fs::write(
            vdir.join(format!("val_{i}.png")),
            png(&RgbImage::from_pixel(32, 32, Rgb([*v, 0, 0]))),
        )
        .unwrap();
    }
    let labels = tmp.path().join("gt.txt");
    std::fs::write(&labels, "beta\nalpha\nzeta\n").unwrap();
    let mut a = args(&src, &out);
    a.val_dir = Some(vdir.clone());
    a.val_labels = Some(labels);
    let s = prepare(&a).unwrap();
    assert_eq!(s.val, 2, "val_2 names an unknown class and is skipped");
    let val = all_images(&PackedDataset::open(&out, "val").unwrap());
    // Sorted by label: alpha (val_1, red 200) then beta (val_0, red 10).
    assert_eq!((val[0].1, val[0].0[0]), (0, 200));
    assert_eq!((val[1].1, val[1].0[0]), (1, 10));

    // Class-folder val with a class the training set lacks.
    let cdir = tmp.path().join("valc");
    for class in ["alpha", "delta"] {
        std::fs::create_dir_all(cdir.join(class)).unwrap();
        std::fs::write(
            cdir.join(class).join("x.png"),
            png(&RgbImage::from_pixel(32, 32, Rgb([1, 2, 3]))),
        )
        .unwrap();
    }
    let mut b = args(&src, &tmp.path().join("out2"));
    b.val_dir = Some(cdir);
    let s = prepare(&b).unwrap();
    assert_eq!(
        (s.val, s.skipped),
        (1, 4),
        "delta/x.png skipped besides the three bad training files"
    );
}

/// A photo-like image (gradients, edges and noise), so that its JPEG runs to tens of kB.
fn photo(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ seed) >> 27;
        Rgb([
            ((x * 255 / w) as u8).wrapping_add(noise as u8),
            if (x / 17 + y / 13 + seed).is_multiple_of(2) {
                200
            } else {
                40
            },
            ((y * 255 / h) as u8) ^ (noise as u8 * 3),
        ])
    })
}

fn encode(img: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(&mut out, format)
        .unwrap();
    out.into_inner()
}

#[test]
fn a_cut_off_image_is_an_error_in_every_format() {
    let img = photo(320, 240, 1);
    let j = jpeg(&img, None);
    assert!(j.len() > 10_000, "a JPEG of {} bytes", j.len());
    let whole = decode_resize(&j, 64, true).unwrap();
    // Cut anywhere from inside the headers to the last byte of the end-of-image marker.
    for cut in [
        200,
        3000,
        j.len() / 2,
        j.len() - 100,
        j.len() - 2,
        j.len() - 1,
    ] {
        let err = decode_resize(&j[..cut], 64, true).unwrap_err();
        assert!(
            err.contains("truncated"),
            "JPEG cut at {cut} of {}: {err}",
            j.len()
        );
    }
    // Complete files stay fine: bytes after the end-of-image marker (phones append videos
    // there), and a thumbnail in an APP1 segment whose own end-of-image marker comes first.
    let mut trailing = j.clone();
    trailing.extend_from_slice(b"\xff\xd8 appended data, not the image");
    assert_eq!(decode_resize(&trailing, 64, true).unwrap().chw, whole.chw);
    let thumb = jpeg(&photo(16, 16, 2), None);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((thumb.len() + 2) as u16).to_be_bytes());
    app1.extend_from_slice(&thumb);
    let with_thumb: Vec<u8> = [&j[..2], &app1, &j[2..]].concat();
    assert_eq!(decode_resize(&with_thumb, 64, true).unwrap().chw, whole.chw);
    let cut = with_thumb.len() - 5000;
    let err = decode_resize(&with_thumb[..cut], 64, true).unwrap_err();
    assert!(err.contains("truncated"), "{err}");
    // The other formats' decoders report a cut themselves; this holds them to it.
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Gif,
        image::ImageFormat::WebP,
        image::ImageFormat::Bmp,
        image::ImageFormat::Tiff,
        image::ImageFormat::Pnm,
        image::ImageFormat::Qoi,
    ] {
        let bytes = encode(&img, format);
        decode_resize(&bytes, 64, true).unwrap();
        for frac in [0.1, 0.5, 0.9, 0.99] {
            let cut = (bytes.len() as f64 * frac) as usize;
            assert!(
                decode_resize(&bytes[..cut], 64, true).is_err(),
                "{format:?} cut at {cut} of {} decodes",
                bytes.len()
            );
        }
    }
}

#[test]
fn prepare_skips_and_names_a_truncated_photo_and_strict_refuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    for (class, seed) in [("cat", 1), ("dog", 2)] {
        std::fs::create_dir_all(src.join(class)).unwrap();
        std::fs::write(
            src.join(class).join("whole.jpg"),
            jpeg(&photo(320, 240, seed), None),
        )
        .unwrap();
    }
    let j = jpeg(&photo(320, 240, 3), None);
    std::fs::write(src.join("cat").join("cut.jpg"), &j[..3000]).unwrap();
    let s = prepare(&args(&src, &out)).unwrap();
    assert_eq!((s.train, s.skipped, s.upscaled), (2, 1, 0));
    assert!(s.skipped_examples[0].path.ends_with("cut.jpg"));
    assert!(s.skipped_examples[0].reason.contains("truncated"));
    let shown = s.to_string();
    assert!(
        shown.contains("cut.jpg") && shown.contains("truncated"),
        "{shown}"
    );
    let report = std::fs::read_to_string(out.join("report.tsv")).unwrap();
    let line = report.lines().find(|l| l.contains("cut.jpg")).unwrap();
    assert!(
        line.starts_with("train\tskipped\t") && line.contains("truncated"),
        "{line}"
    );
    let err = alexnet::data::load_image_file(&src.join("cat").join("cut.jpg"), 32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.jpg") && err.contains("truncated"),
        "{err}"
    );
    let mut strict = args(&src, &tmp.path().join("strict"));
    strict.strict = true;
    let err = prepare(&strict).unwrap_err().to_string();
    assert!(
        err.contains("cut.jpg") && err.contains("truncated"),
        "{err}"
    );
}

fn shard_files(out: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    v.sort();
    v
}

/// Every training image with its label, and the stats.
type Everything = (Vec<(Vec<u8>, u32)>, alexnet::data::Stats);

/// Every image and the stats, or the first error met while opening and reading.
fn read_everything(out: &Path) -> Result<Everything, String> {
    let ds = PackedDataset::open(out, "train").map_err(|e| e.to_string())?;
    let mut images = Vec::new();
    for i in 0..ds.len() {
        let mut b = vec![0u8; 3 * ds.side() * ds.side()];
        let l = ds.read(i, &mut b).map_err(|e| e.to_string())?;
        images.push((b, l));
    }
    Ok((
        images,
        PackedDataset::stats(out).map_err(|e| e.to_string())?,
    ))
}

#[test]
fn any_changed_byte_in_a_shard_or_the_mean_is_caught_and_prepare_repairs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    make_tree(&src);
    let a = args(&src, &out);
    prepare(&a).unwrap();
    let good = read_everything(&out).unwrap();
    let summary = alexnet::data::packed::verify(&out).unwrap();
    assert_eq!((summary.images, summary.shards), (10, 5));
    let shard = shard_files(&out)[1].clone();
    let name = shard.file_name().unwrap().to_string_lossy().into_owned();
    let original = std::fs::read(&shard).unwrap();
    // Every byte: preamble, JSON header, padding, pixels. One bit or a whole byte changed.
    for pos in 0..original.len() {
        let mut bad = original.clone();
        bad[pos] ^= if pos % 2 == 0 { 0x01 } else { 0xFF };
        std::fs::write(&shard, &bad).unwrap();
        let err = alexnet::data::packed::verify(&out).unwrap_err().to_string();
        assert!(
            err.contains(&name) && err.contains("prepare"),
            "byte {pos}: {err}"
        );
        // Opening and reading meet it too (sampled: the same checks, one path each).
        if pos % 97 == 0 {
            let err = read_everything(&out).unwrap_err();
            assert!(
                err.contains(&name) && err.contains("prepare"),
                "byte {pos}: {err}"
            );
        }
    }
    // Same size, pixels overwritten in the middle: re-running prepare rebuilds that shard.
    let mut bad = original.clone();
    let n = bad.len();
    bad[n - 2000..n - 1000].fill(0);
    std::fs::write(&shard, &bad).unwrap();
    let again = prepare(&a).unwrap();
    assert_eq!((again.shards_written, again.shards_reused), (1, 4));
    assert!(again.shards_rebuilt[0].contains(&name), "{again:?}");
    assert_eq!(std::fs::read(&shard).unwrap(), original);
    assert_eq!(read_everything(&out).unwrap(), good);
    // The mean image.
    let mean = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "bin"))
        .unwrap();
    let mut m = std::fs::read(&mean).unwrap();
    m[100] ^= 4;
    std::fs::write(&mean, &m).unwrap();
    let err = PackedDataset::stats(&out).unwrap_err().to_string();
    assert!(err.contains("checksum") && err.contains("prepare"), "{err}");
    assert!(alexnet::data::packed::verify(&out).is_err());
    prepare(&a).unwrap();
    assert_eq!(read_everything(&out).unwrap(), good);
    // A dataset of the older format (no checksums) is refused with what to do, then rebuilt.
    let meta_path = out.join("meta.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    std::fs::write(&meta_path, meta.replace("\"version\": 2", "\"version\": 1")).unwrap();
    let err = read_everything(&out).unwrap_err();
    assert!(err.contains("v1") && err.contains("prepare"), "{err}");
    let again = prepare(&a).unwrap();
    assert_eq!(
        again.shards_written, 0,
        "v1 meta, v2 shards: only meta.json is redone"
    );
    assert_eq!(read_everything(&out).unwrap(), good);
}

#[test]
fn an_out_inside_src_is_left_out_of_the_input_and_out_equal_to_src_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let out = src.join("prepared");
    let first = prepare(&args(&src, &out)).unwrap();
    let second = prepare(&args(&src, &out)).unwrap();
    assert_eq!(first.classes, 3);
    assert_eq!((second.classes, second.train), (3, 10));
    assert_eq!(second.shards_written, 0, "the same input: nothing to redo");
    assert_eq!(
        PackedDataset::open(&out, "train").unwrap().class_names(),
        ["alpha", "beta", "gamma"]
    );
    // Deeper inside a class folder, too.
    std::fs::remove_dir_all(&out).unwrap();
    let deep = src.join("alpha").join("out");
    prepare(&args(&src, &deep)).unwrap();
    assert_eq!(prepare(&args(&src, &deep)).unwrap().skipped, 3);
    let err = prepare(&args(&src, &src)).unwrap_err().to_string();
    assert!(err.contains("input folder"), "{err}");
    // A folder of someone's files inside SRC would silently stop being input: refused.
    let err = prepare(&args(&src, &src.join("beta")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds other files"), "{err}");
}

#[test]
fn a_complete_dataset_survives_a_failed_or_refused_run_and_is_replaced_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    make_tree(&src);
    let other = tmp.path().join("other");
    for class in ["x", "y"] {
        std::fs::create_dir_all(other.join(class)).unwrap();
        for i in 0..4u8 {
            let img = RgbImage::from_pixel(40, 40, Rgb([i * 50, 7, 200]));
            std::fs::write(other.join(class).join(format!("{i}.png")), png(&img)).unwrap();
        }
    }
    let a = args(&src, &out);
    prepare(&a).unwrap();
    let good = read_everything(&out).unwrap();
    // The same run again: a no-op.
    let again = prepare(&a).unwrap();
    assert_eq!((again.shards_written, again.shards_reused), (0, 5));
    // Another SRC, or another side: refused, naming the dataset and both ways on.
    let mut b = args(&other, &out);
    for refused in [b.clone(), {
        let mut s = a.clone();
        s.side = 24;
        s
    }] {
        let err = prepare(&refused).unwrap_err().to_string();
        assert!(
            err.contains(&*out.to_string_lossy())
                && err.contains("--overwrite")
                && err.contains("another OUT"),
            "{err}"
        );
        assert_eq!(read_everything(&out).unwrap(), good);
    }
    // A run that fails part-way (an undecodable file under --strict, found while building the
    // second shard) leaves the complete dataset as it was, with --overwrite or without.
    std::fs::write(other.join("y").join("2.png"), b"not a png").unwrap();
    b.strict = true;
    b.overwrite = true;
    let err = prepare(&b).unwrap_err().to_string();
    assert!(err.contains("2.png"), "{err}");
    assert_eq!(read_everything(&out).unwrap(), good);
    let mut a_strict = a.clone();
    a_strict.strict = true;
    std::fs::write(src.join("beta").join("zz.png"), b"not a png").unwrap();
    assert!(prepare(&a_strict).is_err());
    assert_eq!(read_everything(&out).unwrap(), good);
    // --overwrite replaces it with exactly what a fresh OUT gets, and only its files remain.
    b.strict = false;
    prepare(&b).unwrap();
    let fresh = tmp.path().join("fresh");
    prepare(&args(&other, &fresh)).unwrap();
    assert_eq!(
        read_everything(&out).unwrap(),
        read_everything(&fresh).unwrap()
    );
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&out), names(&fresh));
}
