//! `alexnet-cli prepare`: photos on disk → packed dataset (see `packed` for the format).
//!
//! Work is planned first (every file, its label and its shard), then shards are built in order,
//! each by all cores, and renamed into place when complete. A shard's file name carries a key of
//! its content (settings, planned files, and the keys of the split's earlier shards, whose images
//! its duplicate detection depends on), so a re-run with the same inputs finds, checks and keeps
//! every complete shard and rebuilds the rest (an interrupted run resumes; a damaged shard is
//! rebuilt), while a run with other inputs writes beside the dataset already there instead of over
//! it. `meta.json` is written last, by rename: until then OUT holds the previous dataset, whole;
//! only after it are the files no longer listed removed. Anything partial (`*.tmp`) is discarded.

use super::image_io::decode_resize;
use super::packed::{
    self, check_pixels, read_shard_header, write_atomic, write_shard, Meta, Planned, Recipe,
    ShardHeader, Skip, SplitMeta, StatsMeta, ValSource,
};
use super::{compute_stats, Dataset, PackedDataset};
use crate::rng::{hash, Rng};
use crate::{Error, Result};
use crc32fast::hash as crc32;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The largest stored side (192 MiB per image) and shard (images per file): far above use, and
/// they keep a shard's size computable and each image allocatable.
const MAX_SIDE: u64 = 8192;
const MAX_SHARD: u64 = 1 << 16;

/// Prepare a dataset for training: decode every image, rescale its shorter side to 256, keep the
/// central 256x256 (as in the paper), store them in memory-mappable shards, and compute the mean
/// image and the RGB PCA over the training images.
#[derive(clap::Args, Debug, Clone)]
pub struct PrepareArgs {
    /// Training images: one folder per class (`SRC/<class>/*.jpg`, any depth below it). Classes
    /// are numbered in the sorted order of the folder names (ILSVRC: `train/`, with wnid folders).
    pub src: PathBuf,
    /// Output directory (created; a previous, interrupted run there is resumed). Inside SRC it is
    /// left out of the input.
    pub out: PathBuf,
    /// Validation images: one folder per class like SRC, or a flat folder with --val-labels.
    #[arg(long, conflicts_with = "val_fraction")]
    pub val_dir: Option<PathBuf>,
    /// Labels of a flat --val-dir: either one label per line for the files in sorted name order,
    /// or `<file> <label>` lines (whitespace or comma separated; the file with or without its
    /// extension). A label is a class folder name (a wnid) or a 0-based index into the sorted
    /// class list (Caffe's val.txt). The official ILSVRC2012_validation_ground_truth.txt numbers
    /// classes in the devkit's own order, not sorted wnids: convert it to wnids first.
    #[arg(long, requires = "val_dir")]
    pub val_labels: Option<PathBuf>,
    /// Hold out this fraction of each training class as validation (stratified, seeded).
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Human-readable class names, `wnid name, synonyms` per line (synset_words.txt). Default:
    /// synset_words.txt in SRC or its parent if present, else the folder names.
    #[arg(long)]
    pub synsets: Option<PathBuf>,
    /// Fail on the first unreadable or undecodable file, empty class, or unlabelled/unknown
    /// validation image, instead of skipping it and listing it in OUT/report.tsv.
    #[arg(long)]
    pub strict: bool,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0, value_parser = crate::settings::count_in(0, crate::settings::MAX_THREADS))]
    pub threads: usize,
    /// Seed of the --val-fraction split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stored image side (the paper: 256), at most 8192.
    #[arg(long, default_value_t = 256, value_parser = crate::settings::count_in(1, MAX_SIDE))]
    pub side: usize,
    /// Images per shard file (the unit of resumption), at most 65536.
    #[arg(long, default_value_t = 1024, value_parser = crate::settings::count_in(1, MAX_SHARD))]
    pub shard_size: usize,
    /// Ignore EXIF orientation tags (store pixels as encoded, as older pipelines did).
    #[arg(long)]
    pub no_exif: bool,
    /// No progress bar and no printed summary.
    #[arg(long)]
    pub quiet: bool,
    /// Replace a complete dataset in OUT that was made from another SRC or validation source, or
    /// with another --side or EXIF choice (without it, that is refused). The old dataset stays
    /// usable until the new one is complete, so OUT needs room for both meanwhile.
    #[arg(long)]
    pub overwrite: bool,
}

/// What `prepare` did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrepareSummary {
    pub out: PathBuf,
    pub classes: usize,
    pub train: usize,
    pub val: usize,
    /// Files left out (unreadable, truncated, not an image, no label, unknown class...), listed
    /// in report.tsv.
    pub skipped: usize,
    /// The first few of them, with the reason (the summary shows these).
    pub skipped_examples: Vec<Skip>,
    /// Files whose content repeats an earlier file of the same split (stored once).
    pub duplicates: usize,
    /// Validation images whose content is also in the training split (kept, listed).
    pub val_in_train: usize,
    /// Images enlarged because their shorter side was below `side`.
    pub upscaled: usize,
    pub empty_classes: Vec<String>,
    pub shards_written: usize,
    pub shards_reused: usize,
    /// Shards found damaged (or of an older format) and rebuilt, with the reason.
    pub shards_rebuilt: Vec<String>,
    /// Images decoded in this run, and their rate.
    pub decoded: usize,
    pub seconds: f64,
    pub images_per_s: f64,
    pub bytes: u64,
}

impl std::fmt::Display for PrepareSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "prepared {} ({} classes)",
            self.out.display(),
            self.classes
        )?;
        writeln!(
            f,
            "  train {} images, val {} images, {:.2} GB",
            self.train,
            self.val,
            self.bytes as f64 / 1e9
        )?;
        writeln!(
            f,
            "  decoded {} images in {:.1} s ({:.0} images/s); shards written {}, reused {}",
            self.decoded, self.seconds, self.images_per_s, self.shards_written, self.shards_reused
        )?;
        write!(
            f,
            "  skipped {}, duplicates {}, val also in train {}, upscaled {}, empty classes {}",
            self.skipped,
            self.duplicates,
            self.val_in_train,
            self.upscaled,
            self.empty_classes.len()
        )?;
        for s in &self.skipped_examples {
            write!(f, "\n    skipped {}: {}", s.path, s.reason)?;
        }
        if self.skipped > self.skipped_examples.len() {
            write!(
                f,
                "\n    ... and {} more skipped",
                self.skipped - self.skipped_examples.len()
            )?;
        }
        for r in &self.shards_rebuilt {
            write!(f, "\n  rebuilt {r}")?;
        }
        if self.skipped + self.duplicates + self.val_in_train + self.upscaled > 0 {
            write!(f, "\n  details: {}", self.out.join("report.tsv").display())?;
        }
        Ok(())
    }
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Whether `dir` is the output directory, which is never input (it may lie inside SRC).
fn is_out(dir: &Path, out: &Path) -> bool {
    dir.canonicalize().is_ok_and(|d| d == out)
}

/// Every non-hidden regular file below `dir` (recursively), sorted, with its size; `out` (the
/// resolved output directory) is left out.
fn files_below(dir: &Path, out: &Path, found: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        if is_hidden(&p) {
            continue;
        }
        let md = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
        if md.is_dir() {
            if !is_out(&p, out) {
                files_below(&p, out, found)?;
            }
        } else if md.is_file() {
            found.push((p, md.len()));
        }
    }
    Ok(())
}

/// Class folders of `root` (sorted) and the files in each; files directly in `root` are returned
/// separately (they belong to no class). `out` (the resolved output directory) is left out.
#[allow(clippy::type_complexity)]
fn class_folders(
    root: &Path,
    out: &Path,
) -> Result<(Vec<(String, Vec<(PathBuf, u64)>)>, Vec<PathBuf>)> {
    let mut classes = Vec::new();
    let mut loose = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(root, e)))
        .collect::<Result<_>>()?;
    entries.sort();
    for p in entries {
        if is_hidden(&p) {
            continue;
        }
        if p.is_dir() {
            if is_out(&p, out) {
                continue;
            }
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut files = Vec::new();
            files_below(&p, out, &mut files)?;
            classes.push((name, files));
        } else {
            loose.push(p);
        }
    }
    Ok((classes, loose))
}

/// `wnid → human-readable name` from a synset_words.txt-style file.
pub fn parse_synsets(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (id, name) = l.split_once(char::is_whitespace).unwrap_or((l, l));
            (!id.is_empty()).then(|| (id.to_string(), name.trim().to_string()))
        })
        .collect()
}

/// Labels for the files of a flat validation folder. `files` are the file names in sorted order,
/// `classes` the class ids in label order. Returns one entry per file: its label, or why it has
/// none. Formats: one label per line in file order, or `<file> <label>` lines (see
/// [`PrepareArgs::val_labels`]); a header line that names no file is ignored.
pub fn parse_val_labels(
    text: &str,
    files: &[String],
    classes: &[String],
) -> std::result::Result<Vec<std::result::Result<u32, String>>, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let class_index: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let label = |tok: &str| -> std::result::Result<u32, String> {
        if let Some(&i) = class_index.get(tok) {
            return Ok(i);
        }
        match tok.parse::<usize>() {
            Ok(i) if i < classes.len() => Ok(i as u32),
            Ok(i) => Err(format!(
                "label {i} is not below the {} training classes",
                classes.len()
            )),
            Err(_) => Err(format!("class {tok:?} is not among the training classes")),
        }
    };
    let split = |l: &str| -> Vec<String> {
        l.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()
    };
    let two_column = lines.iter().any(|l| split(l).len() >= 2);
    if !two_column {
        if lines.len() != files.len() {
            return Err(format!(
                "{} labels (one per line) for {} files in the validation folder",
                lines.len(),
                files.len()
            ));
        }
        return Ok(lines.iter().map(|l| label(l)).collect());
    }
    // `<file> <label>`: match by full name or by stem (LOC_val_solution.csv has no extension).
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        by_name.insert(f.as_str(), i);
        if let Some((stem, _)) = f.rsplit_once('.') {
            by_name.entry(stem).or_insert(i);
        }
    }
    let mut out: Vec<Option<std::result::Result<u32, String>>> = vec![None; files.len()];
    for (n, l) in lines.iter().enumerate() {
        let toks = split(l);
        let name = Path::new(&toks[0])
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(&i) = by_name.get(name.as_str()) else {
            if n == 0 {
                continue; // a header such as "ImageId,PredictionString"
            }
            return Err(format!(
                "line {}: {:?} is not a file in the validation folder",
                n + 1,
                toks[0]
            ));
        };
        let Some(tok) = toks.get(1) else {
            return Err(format!("line {}: no label after the file name", n + 1));
        };
        if out[i].is_some() {
            return Err(format!("line {}: a second label for {name}", n + 1));
        }
        out[i] = Some(label(tok));
    }
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err("no label in the --val-labels file".into())))
        .collect())
}

/// The whole job: each split's planned files in storage order, plus files skipped up front.
struct Plan {
    class_ids: Vec<String>,
    empty_classes: Vec<String>,
    train: Vec<Planned>,
    val: Option<Vec<Planned>>,
    skipped: Vec<(String, Skip)>,
}

fn fail_or_skip(
    strict: bool,
    skipped: &mut Vec<(String, Skip)>,
    split: &str,
    path: &Path,
    reason: &str,
) -> Result<()> {
    if strict {
        return Err(Error::data(path, format!("{reason} (--strict)")));
    }
    skipped.push((
        split.to_string(),
        Skip {
            path: path.to_string_lossy().into_owned(),
            reason: reason.to_string(),
        },
    ));
    Ok(())
}

fn planned(path: &Path, size: u64, label: u32) -> Planned {
    Planned {
        path: path.to_string_lossy().into_owned(),
        size,
        label,
    }
}

/// `out` is the resolved output directory, left out of the input.
fn plan(args: &PrepareArgs, out: &Path) -> Result<Plan> {
    let (classes, loose) = class_folders(&args.src, out)?;
    if classes.is_empty() {
        return Err(Error::data(
            &args.src,
            "no class folders: expected SRC/<class>/<images>",
        ));
    }
    let mut skipped = Vec::new();
    for p in &loose {
        fail_or_skip(
            args.strict,
            &mut skipped,
            "train",
            p,
            "not inside a class folder",
        )?;
    }
    let class_ids: Vec<String> = classes.iter().map(|(c, _)| c.clone()).collect();
    let mut empty_classes = Vec::new();
    let mut train = Vec::new();
    for (label, (name, files)) in classes.iter().enumerate() {
        if files.is_empty() {
            if args.strict {
                return Err(Error::data(
                    args.src.join(name),
                    "empty class folder (--strict)",
                ));
            }
            empty_classes.push(name.clone());
        }
        train.extend(files.iter().map(|(p, s)| planned(p, *s, label as u32)));
    }
    let mut val = None;
    if let Some(f) = args.val_fraction {
        if !(0.0..1.0).contains(&f) {
            return Err(Error::Config(format!(
                "--val-fraction {f} must be in [0, 1)"
            )));
        }
        let mut by_class: Vec<Vec<Planned>> = vec![Vec::new(); class_ids.len()];
        for p in train.drain(..) {
            by_class[p.label as usize].push(p);
        }
        let mut v = Vec::new();
        for (c, mut items) in by_class.into_iter().enumerate() {
            Rng::new(hash(args.seed, c as u64)).shuffle(&mut items);
            let k = (items.len() as f64 * f).round() as usize;
            let mut rest = items.split_off(k);
            items.sort_by(|a, b| a.path.cmp(&b.path));
            rest.sort_by(|a, b| a.path.cmp(&b.path));
            v.extend(items);
            train.extend(rest);
        }
        val = Some(v);
    } else if let Some(dir) = &args.val_dir {
        let mut v = Vec::new();
        if let Some(lpath) = &args.val_labels {
            let mut files = Vec::new();
            for (p, s) in {
                let mut all = Vec::new();
                files_below(dir, out, &mut all)?;
                all
            } {
                if p.parent() == Some(dir.as_path()) {
                    files.push((p, s));
                } else {
                    fail_or_skip(
                        args.strict,
                        &mut skipped,
                        "val",
                        &p,
                        "in a subfolder of a flat --val-dir",
                    )?;
                }
            }
            let names: Vec<String> = files
                .iter()
                .map(|(p, _)| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect();
            let text = std::fs::read_to_string(lpath).map_err(|e| Error::io(lpath, e))?;
            let labels =
                parse_val_labels(&text, &names, &class_ids).map_err(|m| Error::data(lpath, m))?;
            for ((p, s), l) in files.iter().zip(labels) {
                match l {
                    Ok(l) => v.push(planned(p, *s, l)),
                    Err(reason) => fail_or_skip(args.strict, &mut skipped, "val", p, &reason)?,
                }
            }
            v.sort_by(|a, b| (a.label, &a.path).cmp(&(b.label, &b.path)));
        } else {
            let (vclasses, vloose) = class_folders(dir, out)?;
            for p in &vloose {
                fail_or_skip(
                    args.strict,
                    &mut skipped,
                    "val",
                    p,
                    "not inside a class folder (flat val folders need --val-labels)",
                )?;
            }
            let index: HashMap<&str, u32> = class_ids
                .iter()
                .enumerate()
                .map(|(i, c)| (c.as_str(), i as u32))
                .collect();
            for (name, files) in &vclasses {
                match index.get(name.as_str()) {
                    Some(&l) => v.extend(files.iter().map(|(p, s)| planned(p, *s, l))),
                    None => {
                        for (p, _) in files {
                            fail_or_skip(
                                args.strict,
                                &mut skipped,
                                "val",
                                p,
                                &format!("class {name:?} is not a training class"),
                            )?;
                        }
                    }
                }
            }
        }
        val = Some(v);
    }
    Ok(Plan {
        class_ids,
        empty_classes,
        train,
        val,
        skipped,
    })
}

/// 64-bit content hash of some bytes (duplicate detection of files, and the shard file keys).
fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = hash(bytes.len() as u64, 0x6475_7065);
    for chunk in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = hash(h, u64::from_le_bytes(w));
    }
    h
}

struct Decodedfile {
    result: std::result::Result<(Vec<u8>, bool), String>,
    hash: u64,
}

fn decode_file(p: &Planned, side: usize, exif: bool) -> Decodedfile {
    match std::fs::read(&p.path) {
        Err(e) => Decodedfile {
            result: Err(format!("cannot read: {e}")),
            hash: 0,
        },
        Ok(bytes) => Decodedfile {
            hash: content_hash(&bytes),
            result: decode_resize(&bytes, side, exif).map(|d| (d.chw, d.upscaled)),
        },
    }
}

/// Totals over a split's shards.
#[derive(Default)]
struct SplitTotals {
    count: usize,
    skipped: Vec<Skip>,
    duplicates: Vec<Skip>,
    upscaled: Vec<String>,
    written: usize,
    reused: usize,
    rebuilt: Vec<String>,
    decoded: usize,
}

#[allow(clippy::too_many_arguments)]
fn build_split(
    args: &PrepareArgs,
    split: &str,
    items: &[Planned],
    seen: &mut HashMap<u64, String>,
    other_seen: Option<&HashMap<u64, String>>,
    val_in_train: &mut Vec<Skip>,
    bar: &ProgressBar,
) -> Result<(SplitTotals, Vec<String>)> {
    let exif = !args.no_exif;
    let mut t = SplitTotals::default();
    let mut names = Vec::new();
    let mut key = 0;
    for (s, chunk) in items.chunks(args.shard_size).enumerate() {
        let planned_json = serde_json::to_vec(&(packed::VERSION, args.side, exif, chunk))
            .map_err(|e| Error::Config(e.to_string()))?;
        key = hash(key, content_hash(&planned_json));
        let name = format!("{split}-{s:05}-{key:016x}.pack");
        let path = args.out.join(&name);
        let reusable = match read_shard_header(&path) {
            Ok(Some((h, offset)))
                if h.side == args.side && h.exif == exif && h.planned == chunk =>
            {
                match check_pixels(&path, &h, offset) {
                    Ok(()) => Some(h),
                    Err(why) => {
                        t.rebuilt.push(format!("{name}: {why}"));
                        None
                    }
                }
            }
            Ok(None) => None,
            // Another plan under the same name would take a 64-bit key collision.
            Ok(Some(_)) => None,
            Err(why) => {
                t.rebuilt.push(format!("{name}: {why}"));
                None
            }
        };
        let header = if let Some(h) = reusable {
            bar.inc(chunk.len() as u64);
            t.reused += 1;
            h
        } else {
            let decoded: Vec<Decodedfile> = chunk
                .par_iter()
                .map(|p| {
                    let d = decode_file(p, args.side, exif);
                    bar.inc(1);
                    d
                })
                .collect();
            t.decoded += chunk.len();
            let mut h = ShardHeader {
                side: args.side,
                exif,
                planned: chunk.to_vec(),
                kept: Vec::new(),
                hashes: Vec::new(),
                skipped: Vec::new(),
                duplicates: Vec::new(),
                upscaled: Vec::new(),
                checksums: Vec::new(),
            };
            // Dedup needs the hashes of every earlier shard of the split: built in order below.
            let mut images = Vec::new();
            let mut local: HashMap<u64, String> = HashMap::new();
            for (i, (p, d)) in chunk.iter().zip(decoded).enumerate() {
                match d.result {
                    Err(reason) => {
                        if args.strict {
                            return Err(Error::data(&p.path, format!("{reason} (--strict)")));
                        }
                        h.skipped.push(Skip {
                            path: p.path.clone(),
                            reason,
                        });
                    }
                    Ok((img, upscaled)) => {
                        if let Some(first) = seen.get(&d.hash).or_else(|| local.get(&d.hash)) {
                            h.duplicates.push(Skip {
                                path: p.path.clone(),
                                reason: format!("same content as {first}"),
                            });
                            continue;
                        }
                        local.insert(d.hash, p.path.clone());
                        if upscaled {
                            h.upscaled.push(p.path.clone());
                        }
                        h.kept.push(i);
                        h.hashes.push(d.hash);
                        h.checksums.push(crc32(&img));
                        images.push(img);
                    }
                }
            }
            write_shard(&path, &h, &images)?;
            t.written += 1;
            h
        };
        for (&k, &hsh) in header.kept.iter().zip(&header.hashes) {
            let p = &header.planned[k].path;
            if let Some(first) = other_seen.and_then(|o| o.get(&hsh)) {
                val_in_train.push(Skip {
                    path: p.clone(),
                    reason: format!("same content as training image {first}"),
                });
            }
            seen.entry(hsh).or_insert_with(|| p.clone());
        }
        t.count += header.kept.len();
        t.skipped.extend(header.skipped);
        t.duplicates.extend(header.duplicates);
        t.upscaled.extend(header.upscaled);
        names.push(name);
    }
    Ok((t, names))
}

/// Whether `name` is a file `prepare` writes, other than `meta.json` and `report.tsv`: shards,
/// mean images, format v1's `stats.json`, and their temporary files.
fn is_ours(name: &str) -> bool {
    let name = name.strip_suffix(".tmp").unwrap_or(name);
    ((name.starts_with("train-") || name.starts_with("val-")) && name.ends_with(".pack"))
        || (name.starts_with("mean") && name.ends_with(".bin"))
        || name == "stats.json"
        || name == "meta.json"
        || name == "report.tsv"
}

/// Removes our files in `out` whose names `keep` refuses.
fn remove_stale(out: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
    for e in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let p = e.map_err(|e| Error::io(out, e))?.path();
        let Some(n) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if is_ours(n) && !keep(n) {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// `p` absolute, with symlinks resolved as far as it exists (OUT may not exist yet).
fn resolved(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            return Ok(rest.iter().rev().fold(c, |acc, n| acc.join(n)));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return Ok(abs),
        }
    }
}

/// What this run would make its dataset from, and the resolved OUT. Refuses an OUT that is an
/// input folder itself, or one inside an input folder that holds files of its own (they would
/// silently stop being input).
fn recipe(args: &PrepareArgs) -> Result<(Recipe, PathBuf)> {
    let out = resolved(&args.out)?;
    let src = resolved(&args.src)?;
    let val_dir = args.val_dir.as_deref().map(resolved).transpose()?;
    for input in std::iter::once(&src).chain(&val_dir) {
        if *input == out {
            return Err(Error::Config(format!(
                "OUT {} is an input folder itself: its dataset files would be read as images; \
                 choose an OUT outside it (or a new subfolder, which is left out of the input)",
                args.out.display()
            )));
        }
        if out.starts_with(input) && out.is_dir() {
            let foreign = std::fs::read_dir(&out)
                .map_err(|e| Error::io(&out, e))?
                .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
                .find(|n| !is_ours(n));
            if let Some(n) = foreign {
                return Err(Error::Config(format!(
                    "OUT {} is inside the input folder {} and holds other files (e.g. {n}): \
                     prepare leaves OUT out of the input, so they would be lost from it; \
                     choose a new or empty OUT",
                    args.out.display(),
                    input.display()
                )));
            }
        }
    }
    let text = |p: &Path| p.to_string_lossy().into_owned();
    let val = match (args.val_fraction, &val_dir) {
        (Some(fraction), _) => ValSource::Fraction {
            fraction,
            seed: args.seed,
        },
        (None, Some(dir)) => ValSource::Dir {
            dir: text(dir),
            labels: args
                .val_labels
                .as_deref()
                .map(resolved)
                .transpose()?
                .map(|l| text(&l)),
        },
        (None, None) => ValSource::None,
    };
    let recipe = Recipe {
        src: text(&src),
        val,
        side: args.side,
        exif: !args.no_exif,
    };
    Ok((recipe, out))
}

/// Refuses to replace a complete dataset in OUT made another way, unless `--overwrite`. An
/// older-format or unreadable `meta.json` is no usable dataset to protect.
fn check_existing(args: &PrepareArgs, recipe: &Recipe) -> Result<()> {
    let Ok(meta) = packed::read_meta(&args.out) else {
        return Ok(());
    };
    let differences = meta.recipe.differences(recipe);
    if differences.is_empty() || args.overwrite {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{} already holds a complete dataset ({} training images) made differently: {} \
         (found vs this run). Choose another OUT, or add --overwrite to replace it (it stays \
         usable until the new one is complete)",
        args.out.display(),
        meta.train.count,
        differences.join("; ")
    )))
}

fn synset_names(args: &PrepareArgs, class_ids: &[String]) -> Result<Vec<String>> {
    let path = match &args.synsets {
        Some(p) => Some(p.clone()),
        None => [
            args.src.join("synset_words.txt"),
            args.src.join("../synset_words.txt"),
        ]
        .into_iter()
        .find(|p| p.is_file()),
    };
    let map = match path {
        Some(p) => parse_synsets(&std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?),
        None => HashMap::new(),
    };
    Ok(class_ids
        .iter()
        .map(|c| map.get(c).cloned().unwrap_or_else(|| c.clone()))
        .collect())
}

/// Runs the preparation (see [`PrepareArgs`]); prints a progress bar and a summary unless quiet.
pub fn prepare(args: &PrepareArgs) -> Result<PrepareSummary> {
    if args.side == 0 || args.shard_size == 0 {
        return Err(Error::Config(
            "--side and --shard-size must be at least 1".into(),
        ));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .map_err(|e| Error::Config(format!("cannot start {} threads: {e}", args.threads)))?;
    pool.install(|| prepare_in_pool(args))
}

fn prepare_in_pool(args: &PrepareArgs) -> Result<PrepareSummary> {
    let t0 = Instant::now();
    let (recipe, resolved_out) = recipe(args)?;
    check_existing(args, &recipe)?;
    let plan = plan(args, &resolved_out)?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    // Partial files of an interrupted run; everything complete stays until meta.json is replaced.
    remove_stale(&args.out, |n| !n.ends_with(".tmp"))?;
    let total = plan.train.len() + plan.val.as_ref().map_or(0, |v| v.len());
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .map_err(|e| Error::Config(e.to_string()))?
            .progress_chars("=> "),
    );
    bar.set_prefix("prepare");
    let mut train_seen = HashMap::new();
    let mut val_in_train = Vec::new();
    let (train, train_shards) = build_split(
        args,
        "train",
        &plan.train,
        &mut train_seen,
        None,
        &mut val_in_train,
        &bar,
    )?;
    let mut val_meta = None;
    let mut val = SplitTotals::default();
    let mut keep = train_shards.clone();
    if let Some(items) = &plan.val {
        let (v, names) = build_split(
            args,
            "val",
            items,
            &mut HashMap::new(),
            Some(&train_seen),
            &mut val_in_train,
            &bar,
        )?;
        keep.extend(names.iter().cloned());
        val_meta = Some(SplitMeta {
            count: v.count,
            shards: names,
        });
        val = v;
    }
    bar.finish_and_clear();
    if train.count == 0 {
        return Err(Error::data(&args.src, "no training image could be read"));
    }

    let class_names = synset_names(args, &plan.class_ids)?;
    let train_meta = SplitMeta {
        count: train.count,
        shards: train_shards,
    };
    // Exact stats over every finished training shard, read back through the dataset itself.
    let ds = PackedDataset::open_shards(&args.out, args.side, &class_names, &train_meta)?;
    let stats = compute_stats(&ds, None)?;
    let mean: Vec<u8> = stats.mean.iter().flat_map(|v| v.to_le_bytes()).collect();
    // Named after the shards it belongs to, so it never replaces the current dataset's mean.
    let mean_file = format!("mean-{:016x}.bin", content_hash(keep.join("\n").as_bytes()));
    write_atomic(&args.out.join(&mean_file), |w| w.write_all(&mean))?;
    keep.push(mean_file.clone());
    let meta = Meta {
        format: packed::FORMAT.into(),
        version: packed::VERSION,
        recipe,
        side: args.side,
        class_ids: plan.class_ids.clone(),
        class_names,
        train: train_meta,
        val: val_meta,
        resample: "Catmull-Rom bicubic, antialiased (kernel widened by the downscale factor), exact centre crop".into(),
        exif_orientation: !args.no_exif,
        stats: StatsMeta {
            images: ds.len() as u64,
            eigval: stats.eigval,
            eigvec: stats.eigvec,
            mean_file,
            mean_checksum: crc32(&mean),
        },
    };
    // The switch: before this rename OUT holds the previous dataset, after it the new one.
    write_json(&args.out.join("meta.json"), &meta)?;

    let mut report = String::from("split\tkind\tpath\treason\n");
    let mut line = |split: &str, kind: &str, s: &Skip| {
        report.push_str(&format!("{split}\t{kind}\t{}\t{}\n", s.path, s.reason))
    };
    for (split, s) in &plan.skipped {
        line(split, "skipped", s);
    }
    for (split, t) in [("train", &train), ("val", &val)] {
        t.skipped.iter().for_each(|s| line(split, "skipped", s));
        t.duplicates
            .iter()
            .for_each(|s| line(split, "duplicate", s));
        for p in &t.upscaled {
            line(
                split,
                "upscaled",
                &Skip {
                    path: p.clone(),
                    reason: format!("shorter side below {}", args.side),
                },
            );
        }
    }
    val_in_train
        .iter()
        .for_each(|s| line("val", "also-in-train", s));
    for c in &plan.empty_classes {
        line(
            "train",
            "empty-class",
            &Skip {
                path: args.src.join(c).to_string_lossy().into_owned(),
                reason: "no files".into(),
            },
        );
    }
    write_atomic(&args.out.join("report.tsv"), |w| {
        w.write_all(report.as_bytes())
    })?;
    keep.extend(["meta.json".to_string(), "report.tsv".to_string()]);
    remove_stale(&args.out, |n| keep.iter().any(|k| k == n))?;

    let seconds = t0.elapsed().as_secs_f64();
    let decoded = train.decoded + val.decoded;
    let bytes = ((train.count + val.count) * 3 * args.side * args.side) as u64;
    let summary = PrepareSummary {
        out: args.out.clone(),
        classes: plan.class_ids.len(),
        train: train.count,
        val: val.count,
        skipped: plan.skipped.len() + train.skipped.len() + val.skipped.len(),
        skipped_examples: plan
            .skipped
            .iter()
            .map(|(_, s)| s)
            .chain(&train.skipped)
            .chain(&val.skipped)
            .take(5)
            .cloned()
            .collect(),
        duplicates: train.duplicates.len() + val.duplicates.len(),
        val_in_train: val_in_train.len(),
        upscaled: train.upscaled.len() + val.upscaled.len(),
        empty_classes: plan.empty_classes,
        shards_written: train.written + val.written,
        shards_reused: train.reused + val.reused,
        shards_rebuilt: train.rebuilt.into_iter().chain(val.rebuilt).collect(),
        decoded,
        seconds,
        images_per_s: decoded as f64 / seconds.max(1e-9),
        bytes,
    };
    if !args.quiet {
        eprintln!("{summary}");
    }
    Ok(summary)
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(v).map_err(|e| Error::data(path, e.to_string()))?;
    write_atomic(path, |w| w.write_all(&text))
}
