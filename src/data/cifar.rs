//! CIFAR-10 in its original binary format, read in place (memory-mapped).
//!
//! A record is 1 label byte followed by 1024 R, 1024 G and 1024 B bytes (32x32, row-major), which
//! is already our CHW u8 layout. Training = every `data_batch_*.bin`, test = every
//! `test_batch*.bin`, in file-name order.

use super::{check_read, Dataset};
use crate::{Error, Result};
use memmap2::Mmap;
use std::path::{Path, PathBuf};

const SIDE: usize = 32;
const RECORD: usize = 1 + 3 * SIDE * SIDE;
const NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

pub struct Cifar10 {
    files: Vec<(PathBuf, Mmap)>,
    /// First record index of each file, plus the total at the end.
    starts: Vec<usize>,
    names: Vec<String>,
}

impl Cifar10 {
    /// Opens the training (`data_batch_*.bin`) or test (`test_batch*.bin`) part of `dir`.
    pub fn open(dir: &Path, train: bool) -> Result<Cifar10> {
        let prefix = if train { "data_batch_" } else { "test_batch" };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".bin"))
            })
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(Error::data(
                dir,
                format!("no {prefix}*.bin files: not a CIFAR-10 binary directory"),
            ));
        }
        let mut files = Vec::new();
        let mut starts = vec![0];
        for p in paths {
            let f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
            // SAFETY: the file is opened read-only and we only read; the dataset's files are
            // not expected to change while training (a truncation would be a user error that
            // could fault, as with any memory-mapped reader).
            let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&p, e))?;
            if map.len() % RECORD != 0 {
                return Err(Error::data(
                    &p,
                    format!(
                        "{} bytes is not a whole number of {RECORD}-byte records",
                        map.len()
                    ),
                ));
            }
            if let Some(&bad) = map.iter().step_by(RECORD).find(|&&l| l >= 10) {
                return Err(Error::data(&p, format!("label byte {bad} is not in 0..10")));
            }
            starts.push(starts.last().copied().unwrap_or(0) + map.len() / RECORD);
            files.push((p, map));
        }
        let names = std::fs::read_to_string(dir.join("batches.meta.txt"))
            .ok()
            .map(|t| {
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|n| n.len() == 10)
            .unwrap_or_else(|| NAMES.iter().map(|s| s.to_string()).collect());
        Ok(Cifar10 {
            files,
            starts,
            names,
        })
    }

    /// The files read, in order.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|(p, _)| p.as_path()).collect()
    }
}

impl Dataset for Cifar10 {
    fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }
    fn side(&self) -> usize {
        SIDE
    }
    fn classes(&self) -> usize {
        10
    }
    fn class_names(&self) -> Vec<String> {
        self.names.clone()
    }
    fn read(&self, index: usize, out: &mut [u8]) -> Result<u32> {
        check_read("CIFAR-10", index, self.len(), out.len(), RECORD - 1)?;
        let f = self.starts.partition_point(|&s| s <= index) - 1;
        let rec = &self.files[f].1[(index - self.starts[f]) * RECORD..][..RECORD];
        out.copy_from_slice(&rec[1..]);
        Ok(rec[0] as u32)
    }
}
