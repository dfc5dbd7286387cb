//! Scoring predictions (top-k error, ten-crop and ensemble averaging, per-class accuracy) and the
//! metrics log the trainer appends to and `alexnet-cli plot` reads.
//!
//! Ranking rule, used everywhere here: classes are ordered by probability descending, and equal
//! probabilities by class index ascending (a stable sort). A label is in the top k when fewer
//! than k classes come before it in that order. Ties therefore never count in the label's
//! favour by accident: a net that outputs the same value for every class scores exactly like a
//! fixed guess of classes 0..k, not 0% error. A NaN probability ranks below every number, so a
//! NaN label probability is a miss unless all classes are NaN; the trainer stops on NaN losses
//! anyway.

use std::cmp::Ordering;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Whether class `a` (probability `pa`) ranks before class `b` (probability `pb`).
#[inline]
fn ranks_before(pa: f32, a: usize, pb: f32, b: usize) -> bool {
    match (pa.is_nan(), pb.is_nan()) {
        (false, true) => true,
        (true, false) => false,
        (true, true) => a < b,
        (false, false) => pa > pb || (pa == pb && a < b),
    }
}

/// The 0-based rank of `label` in `row` under the module's ordering.
fn rank_of(row: &[f32], label: usize) -> usize {
    let pl = row[label];
    row.iter()
        .enumerate()
        .filter(|&(c, &p)| c != label && ranks_before(p, c, pl, label))
        .count()
}

/// Number of rows of probs[n, classes] whose label is NOT among the k highest-ranked classes
/// (ties broken by lower class index, see the module comment). A label outside 0..classes counts
/// as a miss. Rows are paired with labels; `probs.len()` must be `labels.len() * classes`.
pub fn topk_errors(probs: &[f32], classes: usize, labels: &[u32], k: usize) -> usize {
    debug_assert_eq!(
        probs.len(),
        labels.len() * classes,
        "probs is not [labels, classes]"
    );
    if classes == 0 {
        return labels.len();
    }
    probs
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, &label)| {
            let label = label as usize;
            label >= classes || rank_of(row, label) >= k
        })
        .count()
}

/// Element-wise average of `m` prediction sets of probs [n, classes] (ensembles: one set per
/// checkpoint). Summed in f64 so the order of the sets does not change the result's last bit.
pub fn average_probs(sets: &[&[f32]]) -> Vec<f32> {
    let Some(first) = sets.first() else {
        return Vec::new();
    };
    debug_assert!(
        sets.iter().all(|s| s.len() == first.len()),
        "sets differ in length"
    );
    let m = sets.len() as f64;
    (0..first.len())
        .map(|i| (sets.iter().map(|s| s[i] as f64).sum::<f64>() / m) as f32)
        .collect()
}

/// Averages consecutive groups of `group` rows of probs [n * group, classes] into [n, classes]:
/// ten-crop evaluation with the 10 crops of each image adjacent (image-major order).
pub fn average_groups(probs: &[f32], group: usize, classes: usize) -> Vec<f32> {
    let row_block = group * classes;
    if row_block == 0 {
        return Vec::new();
    }
    debug_assert_eq!(
        probs.len() % row_block,
        0,
        "probs is not [n * group, classes]"
    );
    let mut out = Vec::with_capacity(probs.len() / group);
    for block in probs.chunks_exact(row_block) {
        let rows: Vec<&[f32]> = block.chunks_exact(classes).collect();
        out.extend(average_probs(&rows));
    }
    out
}

/// Top-k (class, prob) of one row, best first (ties: lower class index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| {
        if ranks_before(row[a], a, row[b], b) {
            Ordering::Less
        } else if a == b {
            Ordering::Equal
        } else {
            Ordering::Greater
        }
    });
    idx.truncate(k);
    idx.into_iter().map(|c| (c, row[c])).collect()
}

/// Counts for one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClassCounts {
    /// Images whose label is this class.
    pub total: u64,
    pub top1_correct: u64,
    pub top5_correct: u64,
}

/// Per-class counts of correct top-1 and top-5 predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassAccuracy {
    classes: usize,
    counts: Vec<ClassCounts>,
}

impl ClassAccuracy {
    pub fn new(classes: usize) -> Self {
        ClassAccuracy {
            classes,
            counts: vec![ClassCounts::default(); classes],
        }
    }

    /// Adds a batch of probs [n, classes] with their labels. Labels outside 0..classes are a
    /// data error.
    pub fn accumulate(&mut self, probs: &[f32], labels: &[u32]) -> Result<()> {
        if probs.len() != labels.len() * self.classes {
            return Err(Error::shape(
                "ClassAccuracy::accumulate",
                format!(
                    "{} probabilities for {} labels x {} classes",
                    probs.len(),
                    labels.len(),
                    self.classes
                ),
            ));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= self.classes) {
            return Err(Error::shape(
                "ClassAccuracy::accumulate",
                format!("label {bad} is outside 0..{}", self.classes),
            ));
        }
        for (row, &label) in probs.chunks_exact(self.classes).zip(labels) {
            let rank = rank_of(row, label as usize);
            let c = &mut self.counts[label as usize];
            c.total += 1;
            c.top1_correct += u64::from(rank < 1);
            c.top5_correct += u64::from(rank < 5);
        }
        Ok(())
    }

    /// Adds another accumulator's counts (e.g. from another thread or shard).
    pub fn merge(&mut self, other: &ClassAccuracy) -> Result<()> {
        if other.classes != self.classes {
            return Err(Error::shape(
                "ClassAccuracy::merge",
                format!("{} classes vs {}", self.classes, other.classes),
            ));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            a.total += b.total;
            a.top1_correct += b.top1_correct;
            a.top5_correct += b.top5_correct;
        }
        Ok(())
    }

    pub fn counts(&self) -> &[ClassCounts] {
        &self.counts
    }

    /// Overall (top-1 error, top-5 error) over everything accumulated; (0, 0) when empty.
    pub fn overall_errors(&self) -> (f64, f64) {
        let total: u64 = self.counts.iter().map(|c| c.total).sum();
        if total == 0 {
            return (0.0, 0.0);
        }
        let t1: u64 = self.counts.iter().map(|c| c.top1_correct).sum();
        let t5: u64 = self.counts.iter().map(|c| c.top5_correct).sum();
        (
            1.0 - t1 as f64 / total as f64,
            1.0 - t5 as f64 / total as f64,
        )
    }

    /// Per-class accuracy (top-1, top-5) in [0, 1]; None for a class with no images.
    pub fn accuracies(&self) -> Vec<Option<(f64, f64)>> {
        self.counts
            .iter()
            .map(|c| {
                (c.total > 0).then(|| {
                    (
                        c.top1_correct as f64 / c.total as f64,
                        c.top5_correct as f64 / c.total as f64,
                    )
                })
            })
            .collect()
    }

    /// A text report: the overall errors, then the `worst` classes by top-1 accuracy (ties by
    /// class index), named from `names` where given.
    pub fn report(&self, names: &[String], worst: usize) -> String {
        use std::fmt::Write as _;
        let (e1, e5) = self.overall_errors();
        let total: u64 = self.counts.iter().map(|c| c.total).sum();
        let mut s = format!(
            "{total} images: top-1 error {:.2}%, top-5 error {:.2}%\n",
            100.0 * e1,
            100.0 * e5
        );
        let acc = self.accuracies();
        let mut seen: Vec<(usize, f64, f64)> = acc
            .iter()
            .enumerate()
            .filter_map(|(c, a)| a.map(|(t1, t5)| (c, t1, t5)))
            .collect();
        seen.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        if worst > 0 && !seen.is_empty() {
            let _ = writeln!(
                s,
                "worst {} classes by top-1 accuracy:",
                worst.min(seen.len())
            );
            let _ = writeln!(
                s,
                "{:>6} {:<30} {:>7} {:>7} {:>7}",
                "class", "name", "images", "top-1", "top-5"
            );
            for &(c, t1, t5) in seen.iter().take(worst) {
                let name = names.get(c).map(String::as_str).unwrap_or("");
                let _ = writeln!(
                    s,
                    "{c:>6} {name:<30} {:>7} {:>6.1}% {:>6.1}%",
                    self.counts[c].total,
                    100.0 * t1,
                    100.0 * t5
                );
            }
        }
        s
    }
}

/// A float that JSON writes as `null` when it is not finite (serde_json's rule for NaN and
/// infinities) and that reads `null` back as NaN, so a diverged step stays a readable record.
mod nullable_f32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f32(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    }
}

/// One training step (or the average over a logging interval).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub epoch: u64,
    pub step: u64,
    pub lr: f32,
    #[serde(with = "nullable_f32")]
    pub loss: f32,
    /// Errors as fractions in [0, 1] on the training batch.
    #[serde(with = "nullable_f32")]
    pub top1_err: f32,
    #[serde(with = "nullable_f32")]
    pub top5_err: f32,
    pub images_per_s: f32,
    /// Seconds the trainer waited for the loader since the previous record.
    pub data_wait_s: f32,
}

/// The end of one epoch. Errors are fractions in [0, 1].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub step: u64,
    pub lr: f32,
    #[serde(with = "nullable_f32")]
    pub train_loss: f32,
    pub train_top1: f32,
    pub train_top5: f32,
    pub val_top1: f32,
    pub val_top5: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_top1_10crop: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_top5_10crop: Option<f32>,
    pub seconds: f64,
}

#[derive(serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum RecordOut<'a> {
    Step(&'a StepRecord),
    Epoch(&'a EpochRecord),
}

/// The metrics log: JSON lines, one object per record, `"kind"` = "step" or "epoch". Each record
/// goes to the OS in one write as soon as it is logged, so a killed process loses nothing it
/// logged; a crash mid-write leaves at most a partial last line, which `read_log` ignores and the
/// next `open` in append mode cuts off.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens (creating if needed) the log; `append` keeps existing records, otherwise the file is
    /// emptied.
    pub fn open(path: &Path, append: bool) -> Result<MetricsLog> {
        let io = |e| Error::io(path, e);
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!append)
            .open(path)
            .map_err(io)?;
        if append {
            // Drop a partial last line left by a crash so the next record starts on its own line.
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io)?;
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if keep != bytes.len() {
                file.set_len(keep as u64).map_err(io)?;
            }
            file.seek(SeekFrom::Start(keep as u64)).map_err(io)?;
        }
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Opens the log to continue a run resumed at `step`: records after `step` (written after the
    /// checkpoint the run resumes from) are dropped so the log does not repeat steps. The trimmed
    /// log replaces the old one atomically (temporary file + rename).
    pub fn open_resume(path: &Path, step: u64) -> Result<MetricsLog> {
        if path.exists() {
            let text = fs::read(path).map_err(|e| Error::io(path, e))?;
            let text = String::from_utf8_lossy(&text);
            // Parse to validate (and to learn each line's step), then keep the original lines.
            read_log(path)?;
            let mut kept = String::new();
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                let v: serde_json::Value = match serde_json::from_str(line) {
                    Ok(v) => v,
                    Err(_) => continue, // blank line
                };
                if v.get("step")
                    .and_then(|s| s.as_u64())
                    .is_none_or(|s| s <= step)
                {
                    kept.push_str(line);
                }
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let tmp = path.with_file_name(format!(
                ".{}.tmp-{}",
                name.unwrap_or_default(),
                std::process::id()
            ));
            fs::write(&tmp, kept).map_err(|e| Error::io(&tmp, e))?;
            fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        }
        MetricsLog::open(path, true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, rec: RecordOut) -> Result<()> {
        let mut line = serde_json::to_string(&rec)
            .map_err(|e| Error::data(&self.path, format!("cannot encode record: {e}")))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn step(&mut self, rec: &StepRecord) -> Result<()> {
        self.write(RecordOut::Step(rec))
    }

    pub fn epoch(&mut self, rec: &EpochRecord) -> Result<()> {
        self.write(RecordOut::Epoch(rec))
    }
}

/// Reads a metrics log. Records of other kinds (from newer versions) are skipped; a last line
/// without its newline that does not parse is a write cut short by a crash and is ignored; any
/// other unparsable line is an error naming its line number.
pub fn read_log(path: &Path) -> Result<(Vec<StepRecord>, Vec<EpochRecord>)> {
    let text = fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8_lossy(&text);
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let (mut steps, mut epochs) = (Vec::new(), Vec::new());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let is_partial_tail = i + 1 == lines.len() && !complete;
        let parsed: std::result::Result<(), String> = (|| {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            match v.get("kind").and_then(|k| k.as_str()) {
                Some("step") => steps.push(serde_json::from_value(v).map_err(|e| e.to_string())?),
                Some("epoch") => epochs.push(serde_json::from_value(v).map_err(|e| e.to_string())?),
                Some(_) => {}
                None => return Err("no \"kind\" field".to_string()),
            }
            Ok(())
        })();
        match parsed {
            Ok(()) => {}
            Err(_) if is_partial_tail => {}
            Err(e) => return Err(Error::data(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok((steps, epochs))
}
