//! The prepared on-disk dataset: fixed-size raw images in memory-mapped shards.
//!
//! ```text
//! OUT/meta.json            written last: classes, splits and their shard lists (its presence = complete)
//! OUT/stats.json, mean.bin eigen-decomposition of the RGB covariance; mean image as raw f32 LE [3,side,side]
//! OUT/report.tsv           every skipped / duplicate / upscaled file with the reason
//! OUT/{train,val}-NNNNN.pack  shards, each:
//!     8 bytes  magic "ALXPACK1"
//!     8 bytes  u64 LE length L of the JSON header
//!     L bytes  JSON header: side, the planned source files, which were kept (with labels and
//!              content hashes), skipped, duplicates
//!     zero padding to a multiple of 4096
//!     count x (3*side*side) bytes: images, u8 CHW (196,608 bytes each at side 256)
//! ```
//! A shard is written to `NAME.tmp`, synced, then renamed, so a file with the final name is
//! always complete; a reader also checks that its length matches its header exactly.

use super::{check_read, Dataset, Stats};
use crate::{Error, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub(crate) const MAGIC: &[u8; 8] = b"ALXPACK1";
pub(crate) const FORMAT: &str = "alexnet-packed";
pub(crate) const VERSION: u32 = 1;
const ALIGN: usize = 4096;

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
}

/// `meta.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub format: String,
    pub version: u32,
    pub side: usize,
    /// Class ids (folder names, sorted) and human-readable names, in label order.
    pub class_ids: Vec<String>,
    pub class_names: Vec<String>,
    pub train: SplitMeta,
    pub val: Option<SplitMeta>,
    pub resample: String,
    pub exif_orientation: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SplitMeta {
    pub count: usize,
    pub shards: Vec<String>,
}

/// `stats.json` (the mean lives in `mean.bin`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StatsFile {
    pub side: usize,
    pub images: u64,
    pub eigval: [f32; 3],
    pub eigvec: [[f32; 3]; 3],
    pub mean_file: String,
}

pub(crate) fn data_offset(json_len: usize) -> usize {
    (16 + json_len).div_ceil(ALIGN) * ALIGN
}

/// Writes a complete shard atomically: `path.tmp`, sync, rename. Leaves nothing behind on error.
pub(crate) fn write_shard(path: &Path, header: &ShardHeader, images: &[Vec<u8>]) -> Result<()> {
    let json = serde_json::to_vec(header).map_err(|e| Error::data(path, e.to_string()))?;
    write_atomic(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(&json)?;
        w.write_all(&vec![0u8; data_offset(json.len()) - 16 - json.len()])?;
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
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        // Best effort: the temporary file is never taken as valid anyway.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Reads and checks a shard's header; `Ok(None)` if the file is absent, `Err` with the reason
/// if it is present but incomplete or corrupt.
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
    let mut head = [0u8; 16];
    f.read_exact(&mut head)
        .map_err(|_| "shorter than its 16-byte preamble".to_string())?;
    if &head[..8] != MAGIC {
        return Err("not a shard (bad magic)".into());
    }
    let json_len = u64::from_le_bytes(head[8..].try_into().unwrap_or([0; 8])) as usize;
    if 16 + json_len > len {
        return Err(format!(
            "truncated: header says {json_len} JSON bytes, file has {len}"
        ));
    }
    let mut json = vec![0u8; json_len];
    f.read_exact(&mut json).map_err(|e| e.to_string())?;
    let h: ShardHeader = serde_json::from_slice(&json).map_err(|e| format!("bad header: {e}"))?;
    let offset = data_offset(json_len);
    let expect = offset + h.kept.len() * 3 * h.side * h.side;
    if len != expect
        || h.kept.len() != h.hashes.len()
        || h.kept.iter().any(|&k| k >= h.planned.len())
    {
        return Err(format!(
            "inconsistent: {len} bytes, header implies {expect}"
        ));
    }
    Ok(Some((h, offset)))
}

struct Shard {
    map: Mmap,
    offset: usize,
    labels: Vec<u32>,
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
    let meta: Meta = serde_json::from_str(&text).map_err(|e| Error::data(&path, e.to_string()))?;
    if meta.format != FORMAT || meta.version != VERSION {
        return Err(Error::data(
            &path,
            format!(
                "format {} v{} is not {FORMAT} v{VERSION}",
                meta.format, meta.version
            ),
        ));
    }
    Ok(meta)
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
        Self::open_shards(dir, &meta, &sm)
    }

    /// Opens the shards of one split as described by `meta` (also used by prepare before it
    /// writes `meta.json`).
    pub(crate) fn open_shards(dir: &Path, meta: &Meta, sm: &SplitMeta) -> Result<PackedDataset> {
        let mut shards = Vec::with_capacity(sm.shards.len());
        let mut starts = vec![0];
        for name in &sm.shards {
            let path = dir.join(name);
            let (h, offset) = read_shard_header(&path)
                .map_err(|m| Error::data(&path, m))?
                .ok_or_else(|| Error::data(&path, "listed in meta.json but missing"))?;
            if h.side != meta.side {
                return Err(Error::data(
                    &path,
                    format!("side {} but meta.json says {}", h.side, meta.side),
                ));
            }
            let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: read-only mapping of a completed shard (renamed into place only once
            // fully written); prepare never rewrites a shard in place, it replaces it by rename.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&path, e))?;
            let labels: Vec<u32> = h.kept.iter().map(|&k| h.planned[k].label).collect();
            if let Some(&bad) = labels.iter().find(|&&l| l as usize >= meta.class_ids.len()) {
                return Err(Error::data(
                    &path,
                    format!("label {bad} beyond the {} classes", meta.class_ids.len()),
                ));
            }
            starts.push(starts.last().copied().unwrap_or(0) + labels.len());
            shards.push(Shard {
                map,
                offset,
                labels,
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
            side: meta.side,
            names: meta.class_names.clone(),
            shards,
            starts,
        })
    }

    /// The statistics stored beside the data.
    pub fn stats(dir: &Path) -> Result<Stats> {
        let path = dir.join("stats.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let s: StatsFile =
            serde_json::from_str(&text).map_err(|e| Error::data(&path, e.to_string()))?;
        let mpath = dir.join(&s.mean_file);
        let bytes = std::fs::read(&mpath).map_err(|e| Error::io(&mpath, e))?;
        if bytes.len() != 3 * s.side * s.side * 4 {
            return Err(Error::data(
                &mpath,
                format!(
                    "{} bytes, expected {} (f32 [3,{},{}])",
                    bytes.len(),
                    12 * s.side * s.side,
                    s.side,
                    s.side
                ),
            ));
        }
        let mean = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Stats {
            side: s.side,
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
        Ok(shard.labels[i])
    }
}
