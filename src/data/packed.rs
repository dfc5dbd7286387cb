//! The prepared on-disk dataset: fixed-size raw images in memory-mapped shards.
//!
//! ```text
//! OUT/meta.json            written last, by rename: what the data was made from, classes, the
//!                          statistics, and per split its shard list (its presence = complete)
//! OUT/mean-KEY.bin         the mean image, raw f32 LE [3,side,side] (checksum in meta.json)
//! OUT/report.tsv           every skipped / duplicate / upscaled file with the reason
//! OUT/{train,val}-NNNNN-KEY.pack  shards, each:
//!     8 bytes  magic "ALXPACK2"
//!     8 bytes  u64 LE length L of the JSON header
//!     4 bytes  u32 LE CRC-32 of the JSON header
//!     L bytes  JSON header: side, the planned source files, which were kept (with labels,
//!              content hashes and the CRC-32 of each stored image), skipped, duplicates
//!     zero padding to a multiple of 4096
//!     count x (3*side*side) bytes: images, u8 CHW (196,608 bytes each at side 256)
//! ```
//! `KEY` is a hash of what the file holds, so a new preparation never writes over a file that
//! the current `meta.json` lists: the old dataset stays whole until the new `meta.json` replaces
//! it. A shard is written to `NAME.tmp`, synced, then renamed, so a file with the final name is
//! always complete; opening checks its length, its header checksum and its zero padding, and
//! every read checks the image it copies out against the image's checksum.

use super::{check_read, Dataset, Stats};
use crate::{Error, Result};
use crc32fast::hash as crc32;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(crate) const MAGIC: &[u8; 8] = b"ALXPACK2";
/// The magic of format v1 (no checksums), recognised only to say what to do about it.
const MAGIC_V1: &[u8; 8] = b"ALXPACK1";
pub(crate) const FORMAT: &str = "alexnet-packed";
pub(crate) const VERSION: u32 = 2;
const ALIGN: usize = 4096;
/// Magic, JSON length, JSON checksum.
const PREAMBLE: usize = 20;
/// What to do about a damaged or outdated dataset, appended to every such error.
pub(crate) const REPAIR: &str =
    "run the same `alexnet-cli prepare` command again: it rebuilds damaged or outdated files";

/// A source file planned for a shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Planned {
    pub path: String,
    pub size: u64,
    pub label: u32,
}

/// A file left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    pub path: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShardHeader {
    pub side: usize,
    pub exif: bool,
    pub planned: Vec<Planned>,
    /// Indices into `planned` of the stored images, in storage order.
    pub kept: Vec<usize>,
    /// Content hash of each stored image's file (duplicate detection across shards).
    pub hashes: Vec<u64>,
    pub skipped: Vec<Skip>,
    pub duplicates: Vec<Skip>,
    /// Stored images whose shorter side was below `side` (enlarged).
    pub upscaled: Vec<String>,
    /// CRC-32 of each stored image's pixels, in storage order.
    pub checksums: Vec<u32>,
}

/// What a dataset was made from and how: equal recipes give the same images and labels (for the
/// same files), so `prepare` may replace a dataset with a different recipe only when asked to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Recipe {
    /// SRC, absolute with symlinks resolved.
    pub src: String,
    pub val: ValSource,
    pub side: usize,
    pub exif: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ValSource {
    None,
    Fraction { fraction: f64, seed: u64 },
    Dir { dir: String, labels: Option<String> },
}

impl Recipe {
    /// What differs from `other`, one `what: ours, theirs` line each.
    pub(crate) fn differences(&self, other: &Recipe) -> Vec<String> {
        let mut d = Vec::new();
        if self.src != other.src {
            d.push(format!("SRC {} vs {}", self.src, other.src));
        }
        if self.val != other.val {
            d.push(format!("validation {:?} vs {:?}", self.val, other.val));
        }
        if self.side != other.side {
            d.push(format!("--side {} vs {}", self.side, other.side));
        }
        if self.exif != other.exif {
            d.push(format!(
                "EXIF orientation {} vs {}",
                if self.exif { "applied" } else { "ignored" },
                if other.exif { "applied" } else { "ignored" }
            ));
        }
        d
    }
}

/// `meta.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub format: String,
    pub version: u32,
    pub recipe: Recipe,
    pub side: usize,
    /// Class ids (folder names, sorted) and human-readable names, in label order.
    pub class_ids: Vec<String>,
    pub class_names: Vec<String>,
    pub train: SplitMeta,
    pub val: Option<SplitMeta>,
    pub resample: String,
    pub exif_orientation: bool,
    pub stats: StatsMeta,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SplitMeta {
    pub count: usize,
    pub shards: Vec<String>,
}

/// The statistics in `meta.json` (inside it, so that they change with the shards in one
/// rename); the mean image lives in `mean_file`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StatsMeta {
    pub images: u64,
    pub eigval: [f32; 3],
    pub eigvec: [[f32; 3]; 3],
    pub mean_file: String,
    /// CRC-32 of `mean_file`'s bytes.
    pub mean_checksum: u32,
}

pub(crate) fn data_offset(json_len: usize) -> usize {
    (PREAMBLE + json_len).div_ceil(ALIGN) * ALIGN
}

/// Writes a complete shard atomically: `path.tmp`, sync, rename. Leaves nothing behind on error.
pub(crate) fn write_shard(path: &Path, header: &ShardHeader, images: &[Vec<u8>]) -> Result<()> {
    let json = serde_json::to_vec(header).map_err(|e| Error::data(path, e.to_string()))?;
    write_atomic(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(&crc32(&json).to_le_bytes())?;
        w.write_all(&json)?;
        w.write_all(&vec![0u8; data_offset(json.len()) - PREAMBLE - json.len()])?;
        for img in images {
            w.write_all(img)?;
        }
        Ok(())
    })
}

/// Writes `path` through a temporary file renamed into place once synced.
pub(crate) fn write_atomic(
    path: &Path,
    body: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        body(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if let Err(e) = result {
        // Best effort: the temporary file is never taken as valid anyway.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Makes a rename into `path`'s folder durable, so that after a power loss `meta.json` never
/// names a shard whose rename was lost. Directories cannot be opened for syncing on Windows.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Reads and checks a shard's header (its checksum, the zero padding and the file length, not
/// the pixels: see [`check_pixels`]); `Ok(None)` if the file is absent, `Err` with the reason if
/// it is present but incomplete, damaged or of an older format.
pub(crate) fn read_shard_header(
    path: &Path,
) -> std::result::Result<Option<(ShardHeader, usize)>, String> {
    use std::io::Read;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
    let mut head = [0u8; PREAMBLE];
    f.read_exact(&mut head)
        .map_err(|_| format!("shorter than its {PREAMBLE}-byte preamble"))?;
    if &head[..8] == MAGIC_V1 {
        return Err("format v1, written by an older alexnet-cli without checksums".into());
    }
    if &head[..8] != MAGIC {
        return Err("not a shard (bad magic)".into());
    }
    let json_len = u64::from_le_bytes(head[8..16].try_into().unwrap_or([0; 8])) as usize;
    let json_sum = u32::from_le_bytes(head[16..20].try_into().unwrap_or([0; 4]));
    let offset = PREAMBLE
        .checked_add(json_len)
        .filter(|&end| end <= len)
        .map(|_| data_offset(json_len))
        .ok_or_else(|| format!("truncated: header says {json_len} JSON bytes, file has {len}"))?;
    let mut rest = vec![0u8; offset.min(len) - PREAMBLE];
    f.read_exact(&mut rest).map_err(|e| e.to_string())?;
    let (json, padding) = rest.split_at(json_len);
    if crc32(json) != json_sum {
        return Err("the header does not match its checksum (damaged)".into());
    }
    if padding.iter().any(|&b| b != 0) {
        return Err("the padding after the header is not zero (damaged)".into());
    }
    let h: ShardHeader = serde_json::from_slice(json).map_err(|e| format!("bad header: {e}"))?;
    let expect = offset + h.kept.len() * 3 * h.side * h.side;
    if len != expect
        || h.kept.len() != h.hashes.len()
        || h.kept.len() != h.checksums.len()
        || h.kept.iter().any(|&k| k >= h.planned.len())
    {
        return Err(format!(
            "inconsistent: {len} bytes, header implies {expect}"
        ));
    }
    Ok(Some((h, offset)))
}

/// Checks every stored image of a shard against its checksum, reading the file once in order.
pub(crate) fn check_pixels(
    path: &Path,
    h: &ShardHeader,
    offset: usize,
) -> std::result::Result<(), String> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    f.seek(std::io::SeekFrom::Start(offset as u64))
        .map_err(|e| e.to_string())?;
    let mut image = vec![0u8; 3 * h.side * h.side];
    for (i, (&want, &k)) in h.checksums.iter().zip(&h.kept).enumerate() {
        f.read_exact(&mut image).map_err(|e| e.to_string())?;
        if crc32(&image) != want {
            return Err(format!(
                "image {i} (from {}) does not match its checksum (damaged)",
                h.planned[k].path
            ));
        }
    }
    Ok(())
}

struct Shard {
    path: PathBuf,
    map: Mmap,
    offset: usize,
    labels: Vec<u32>,
    checksums: Vec<u32>,
    /// Each stored image's source file, as `prepare` recorded it.
    sources: Vec<String>,
}

/// The prepared dataset of one split, memory-mapped: `read` is a copy out of the page cache,
/// safe from any number of threads.
pub struct PackedDataset {
    side: usize,
    names: Vec<String>,
    shards: Vec<Shard>,
    /// First image index of each shard, plus the total at the end.
    starts: Vec<usize>,
}

pub(crate) fn read_meta(dir: &Path) -> Result<Meta> {
    let path = dir.join("meta.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::data(
                &path,
                "missing: not a prepared dataset, or its preparation did not finish (run `alexnet-cli prepare` again to resume)",
            )
        } else {
            Error::io(&path, e)
        }
    })?;
    // Format and version first: an older meta.json lacks fields this version needs.
    #[derive(Deserialize)]
    struct Version {
        format: String,
        version: u32,
    }
    let v: Version = serde_json::from_str(&text).map_err(|e| Error::data(&path, e.to_string()))?;
    if v.format != FORMAT || v.version != VERSION {
        return Err(Error::data(
            &path,
            format!(
                "format {} v{} is not {FORMAT} v{VERSION} (v1 shards carry no checksums): {REPAIR}",
                v.format, v.version
            ),
        ));
    }
    serde_json::from_str(&text).map_err(|e| Error::data(&path, format!("{e}: {REPAIR}")))
}

impl PackedDataset {
    /// Opens split `"train"` or `"val"` of a prepared dataset.
    pub fn open(dir: &Path, split: &str) -> Result<PackedDataset> {
        let meta = read_meta(dir)?;
        let sm = match split {
            "train" => meta.train.clone(),
            "val" => meta.val.clone().ok_or_else(|| {
                Error::Config(format!(
                    "{} has no val split: prepare it with --val-dir or --val-fraction",
                    dir.display()
                ))
            })?,
            other => {
                return Err(Error::Config(format!(
                    "unknown split {other:?} (train or val)"
                )))
            }
        };
        Self::open_shards(dir, meta.side, &meta.class_names, &sm)
    }

    /// Opens the shards of one split (also used by prepare before it writes `meta.json`).
    pub(crate) fn open_shards(
        dir: &Path,
        side: usize,
        class_names: &[String],
        sm: &SplitMeta,
    ) -> Result<PackedDataset> {
        let mut shards = Vec::with_capacity(sm.shards.len());
        let mut starts = vec![0];
        for name in &sm.shards {
            let path = dir.join(name);
            let (h, offset) = read_shard_header(&path)
                .map_err(|m| Error::data(&path, format!("{m}: {REPAIR}")))?
                .ok_or_else(|| {
                    Error::data(&path, format!("listed in meta.json but missing: {REPAIR}"))
                })?;
            if h.side != side {
                return Err(Error::data(
                    &path,
                    format!("side {} but meta.json says {side}: {REPAIR}", h.side),
                ));
            }
            let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: read-only mapping of a completed shard (renamed into place only once
            // fully written); prepare never rewrites a shard in place, it replaces it by rename.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&path, e))?;
            let labels: Vec<u32> = h.kept.iter().map(|&k| h.planned[k].label).collect();
            if let Some(&bad) = labels.iter().find(|&&l| l as usize >= class_names.len()) {
                return Err(Error::data(
                    &path,
                    format!("label {bad} beyond the {} classes", class_names.len()),
                ));
            }
            starts.push(starts.last().copied().unwrap_or(0) + labels.len());
            let sources = h.kept.iter().map(|&k| h.planned[k].path.clone()).collect();
            shards.push(Shard {
                path,
                map,
                offset,
                labels,
                checksums: h.checksums,
                sources,
            });
        }
        let total = starts.last().copied().unwrap_or(0);
        if total != sm.count {
            return Err(Error::data(
                dir.join("meta.json"),
                format!(
                    "a split lists {} images but its shards hold {total}",
                    sm.count
                ),
            ));
        }
        Ok(PackedDataset {
            side,
            names: class_names.to_vec(),
            shards,
            starts,
        })
    }

    /// The source file of every image, in index order, as `prepare` recorded it.
    pub fn source_paths(&self) -> Vec<String> {
        self.shards.iter().flat_map(|s| s.sources.clone()).collect()
    }

    /// The statistics stored with the data.
    pub fn stats(dir: &Path) -> Result<Stats> {
        let meta = read_meta(dir)?;
        let s = meta.stats;
        let mpath = dir.join(&s.mean_file);
        let bytes = std::fs::read(&mpath).map_err(|e| Error::io(&mpath, e))?;
        if bytes.len() != 3 * meta.side * meta.side * 4 {
            return Err(Error::data(
                &mpath,
                format!(
                    "{} bytes, expected {} (f32 [3,{},{}]): {REPAIR}",
                    bytes.len(),
                    12 * meta.side * meta.side,
                    meta.side,
                    meta.side
                ),
            ));
        }
        if crc32(&bytes) != s.mean_checksum {
            return Err(Error::data(
                &mpath,
                format!("does not match its checksum in meta.json (damaged): {REPAIR}"),
            ));
        }
        let mean = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Stats {
            side: meta.side,
            mean,
            eigval: s.eigval,
            eigvec: s.eigvec,
        })
    }
}

impl Dataset for PackedDataset {
    fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }
    fn side(&self) -> usize {
        self.side
    }
    fn classes(&self) -> usize {
        self.names.len()
    }
    fn class_names(&self) -> Vec<String> {
        self.names.clone()
    }
    fn read(&self, index: usize, out: &mut [u8]) -> Result<u32> {
        let per = 3 * self.side * self.side;
        check_read("packed dataset", index, self.len(), out.len(), per)?;
        let s = self.starts.partition_point(|&st| st <= index) - 1;
        let shard = &self.shards[s];
        let i = index - self.starts[s];
        out.copy_from_slice(&shard.map[shard.offset + i * per..][..per]);
        // On every read (CRC-32, ~15 us per 256x256 image, docs/data.md), so that no damaged
        // pixel ever reaches training or evaluation unnoticed, however long after opening.
        if crc32(out) != shard.checksums[i] {
            return Err(Error::data(
                &shard.path,
                format!("image {i} of this shard does not match its checksum (damaged): {REPAIR}"),
            ));
        }
        Ok(shard.labels[i])
    }
}

/// What [`verify`] checked.
#[derive(Clone, Debug, Serialize)]
pub struct VerifySummary {
    pub dir: PathBuf,
    pub shards: usize,
    pub images: usize,
    /// Pixel bytes hashed.
    pub bytes: u64,
    pub seconds: f64,
}

impl std::fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: intact ({} shards, {} images, {:.2} GB of pixels and the mean image checked in {:.1} s, {:.2} GB/s)",
            self.dir.display(),
            self.shards,
            self.images,
            self.bytes as f64 / 1e9,
            self.seconds,
            self.bytes as f64 / 1e9 / self.seconds.max(1e-9)
        )
    }
}

/// Checks a prepared dataset completely, reading every byte once: each shard's header and every
/// image against its checksum, the mean image, and that the splits open. The error names every
/// damaged shard, not just the first.
pub fn verify(dir: &Path) -> Result<VerifySummary> {
    use rayon::prelude::*;
    let t0 = Instant::now();
    let meta = read_meta(dir)?;
    let names: Vec<&String> = meta
        .train
        .shards
        .iter()
        .chain(meta.val.iter().flat_map(|v| &v.shards))
        .collect();
    let checked: Vec<std::result::Result<(usize, u64), String>> = names
        .par_iter()
        .map(|name| {
            let path = dir.join(name);
            let (h, offset) = read_shard_header(&path)?
                .ok_or_else(|| "listed in meta.json but missing".to_string())?;
            check_pixels(&path, &h, offset)?;
            Ok((h.kept.len(), (h.kept.len() * 3 * h.side * h.side) as u64))
        })
        .collect();
    let damaged: Vec<String> = names
        .iter()
        .zip(&checked)
        .filter_map(|(n, r)| r.as_ref().err().map(|m| format!("{n} ({m})")))
        .collect();
    if !damaged.is_empty() {
        return Err(Error::data(
            dir,
            format!(
                "{} of {} shards damaged: {}; {REPAIR}",
                damaged.len(),
                names.len(),
                damaged.join(", ")
            ),
        ));
    }
    PackedDataset::stats(dir)?;
    PackedDataset::open(dir, "train")?;
    if meta.val.is_some() {
        PackedDataset::open(dir, "val")?;
    }
    let (images, bytes) = checked
        .iter()
        .flatten()
        .fold((0, 0), |(i, b), (ci, cb)| (i + ci, b + cb));
    Ok(VerifySummary {
        dir: dir.to_path_buf(),
        shards: names.len(),
        images,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard whose header ends within 20 bytes of a 4096 boundary: the reader once added the
    /// preamble twice when placing the images, took the next page's pixels for padding and
    /// called the shard damaged (prepare then failed on its own fresh output). Every header
    /// length from 40 bytes below a page boundary to 8 above must read back.
    #[test]
    fn shards_read_back_whatever_their_header_length() {
        let dir = tempfile::tempdir().unwrap();
        let side = 2;
        let image = vec![0xffu8; 3 * side * side];
        let header = |path_len: usize| ShardHeader {
            side,
            exif: true,
            planned: vec![Planned {
                path: "p".repeat(path_len),
                size: 1,
                label: 0,
            }],
            kept: vec![0],
            hashes: vec![7],
            skipped: Vec::new(),
            duplicates: Vec::new(),
            upscaled: Vec::new(),
            checksums: vec![crc32(&image)],
        };
        let base = serde_json::to_vec(&header(0)).unwrap().len();
        let mut ends_near_a_page = 0;
        for end in ALIGN - 40..=ALIGN + 8 {
            let Some(path_len) = (end - PREAMBLE).checked_sub(base) else {
                continue;
            };
            let h = header(path_len);
            assert_eq!(PREAMBLE + serde_json::to_vec(&h).unwrap().len(), end);
            let path = dir.path().join(format!("s{end}.pack"));
            write_shard(&path, &h, std::slice::from_ref(&image)).unwrap();
            let (read, offset) = read_shard_header(&path)
                .unwrap_or_else(|e| panic!("header ending at byte {end}: {e}"))
                .unwrap();
            assert_eq!(read, h);
            assert_eq!(offset, end.div_ceil(ALIGN) * ALIGN);
            check_pixels(&path, &read, offset).unwrap();
            ends_near_a_page += usize::from(end + PREAMBLE > ALIGN && end <= ALIGN);
        }
        assert_eq!(ends_near_a_page, 20, "the cases that failed before the fix");
    }
}
