//! A training run's home and identity: the directory its checkpoints and metrics go to (never one
//! that holds another run, unless asked), and on `--resume` the run's own settings, so that a
//! resumed run is the same run.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::checkpoint::{Checkpoint, CheckpointDir, TrainState};
use crate::error::{Error, Result};
use crate::settings::{self, Difference};
use crate::train::TrainArgs;

/// Settings a resumed run may take from the command line: the budget, the machinery and where
/// output goes, none of which changes what is computed (device flags are not training settings
/// at all). Everything else is the run's.
pub const MAY_CHANGE_ON_RESUME: &[&str] = &[
    "steps",
    "epochs",
    "workers",
    "log",
    "quiet",
    "checkpoint_every",
    "keep",
    "checkpoint_dir",
    "runs_dir",
    "resume",
    "override_settings",
    "overwrite",
];

/// Settings that say where a run computes, not what: always the command line's on resume (the
/// engines were made for them), never compared.
const PLACEMENT: [&str; 2] = ["gpus", "executors"];

/// The name of the metrics log inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// The directory this run writes to: `--checkpoint-dir` (refused if it holds another run, unless
/// `--resume` continues that run or `--overwrite` clears it), or a new `RUNS_DIR/run-N`.
pub fn run_directory(args: &TrainArgs) -> Result<PathBuf> {
    let Some(dir) = &args.checkpoint_dir else {
        return new_run_dir(&args.runs_dir);
    };
    if args.resume {
        return Ok(dir.clone());
    }
    let log = args.log.clone().unwrap_or_else(|| dir.join(METRICS_FILE));
    let found = held_run(dir)?.or(log_records(&log)?);
    match found {
        Some(what) if !args.overwrite => Err(Error::Config(format!(
            "{} already holds a run ({what}); a new run would overwrite it. Continue it with \
             --resume, start over there with --overwrite (deletes its checkpoints and metrics), or \
             give another --checkpoint-dir (or none: each run then gets a new directory under {})",
            dir.display(),
            args.runs_dir.display()
        ))),
        Some(_) => {
            clear_run(dir, &log)?;
            Ok(dir.clone())
        }
        None => Ok(dir.clone()),
    }
}

/// Creates `runs/run-N` with the lowest N not taken (by this or a concurrent process: creating the
/// directory is the claim).
fn new_run_dir(runs: &Path) -> Result<PathBuf> {
    fs::create_dir_all(runs).map_err(|e| Error::io(runs, e))?;
    for n in 1.. {
        let dir = runs.join(format!("run-{n}"));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    unreachable!("an unbounded range always yields a free name or an error")
}

/// A description of the run in `dir` ("last checkpoint at step 40, epoch 2"), if it holds one.
fn held_run(dir: &Path) -> Result<Option<String>> {
    let ckpt = CheckpointDir::at(dir);
    let last = ckpt.last();
    if last.exists() {
        // The header alone says where the run stands; a damaged file still counts as a run.
        return Ok(Some(match Checkpoint::read_train_state(&last) {
            Ok(Some(s)) => format!(
                "{} at step {}, epoch {}",
                last.display(),
                s.step,
                s.epoch + 1
            ),
            _ => last.display().to_string(),
        }));
    }
    if !dir.is_dir() {
        return Ok(None);
    }
    Ok(ckpt
        .steps()?
        .last()
        .map(|(_, p)| p.display().to_string())
        .or_else(|| {
            ckpt.best()
                .exists()
                .then(|| ckpt.best().display().to_string())
        }))
}

/// "N records in LOG" if the metrics log has any.
fn log_records(log: &Path) -> Result<Option<String>> {
    match fs::metadata(log) {
        Ok(m) if m.len() > 0 => Ok(Some(format!("metrics in {}", log.display()))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(log, e)),
    }
}

/// `--overwrite`: deletes the old run's checkpoints and metrics (and nothing else in `dir`), so
/// its step files cannot outrank the new run's when old ones are pruned.
fn clear_run(dir: &Path, log: &Path) -> Result<()> {
    let ckpt = CheckpointDir::at(dir);
    let mut doomed: Vec<PathBuf> = ckpt.steps()?.into_iter().map(|(_, p)| p).collect();
    doomed.extend([ckpt.last(), ckpt.best(), log.to_path_buf()]);
    for p in doomed {
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&p, e)),
            _ => {}
        }
    }
    Ok(())
}

/// A run picked up from its last checkpoint.
pub struct Resumed {
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
    /// The run's settings, with the command line's where it may (or, with --override, did)
    /// change them.
    pub args: TrainArgs,
    /// Settings --override changed.
    pub overridden: Vec<Difference>,
    /// The batch size the run had, if known.
    pub saved_batch: Option<usize>,
}

/// Loads DIR/last.safetensors and works out the resumed run's settings: each from the
/// checkpoint unless given on the command line and allowed to change; a given flag that
/// differs otherwise is an error naming each difference, unless `--override`.
pub fn load_resumed(dir: &Path, given: &TrainArgs) -> Result<Resumed> {
    let path = CheckpointDir::at(dir).last();
    if !path.exists() {
        return Err(Error::Config(format!(
            "--resume: {} holds no last.safetensors, so there is no run to resume; start a new \
             run without --resume",
            dir.display()
        )));
    }
    let checkpoint = Checkpoint::load(&path)?;
    let state = checkpoint
        .train_state
        .as_ref()
        .ok_or_else(|| Error::Checkpoint {
            path: path.clone(),
            msg: "holds no training state (an inference-only file); use --init-from".into(),
        })?;
    let Some(saved) = state.settings.clone() else {
        println!(
            "notice: {} predates saved settings: the command line's are used as given",
            path.display()
        );
        return Ok(Resumed {
            path,
            checkpoint,
            args: given.clone(),
            overridden: Vec::new(),
            saved_batch: None,
        });
    };
    let as_json = |e: serde_json::Error| Error::Checkpoint {
        path: path.clone(),
        msg: format!("its saved settings do not match this version's flags: {e}"),
    };
    let given_json = settings_json(given)?;
    let explicit: BTreeSet<String> = given.explicit.iter().cloned().collect();
    let (mut merged, overridden) =
        settings::merge_resumed(&saved, &given_json, &explicit, MAY_CHANGE_ON_RESUME)?;
    // Where the columns run is this process's choice, like the device flags: the engines were
    // made for the given value.
    for key in PLACEMENT {
        if let Some(v) = given_json.get(key) {
            merged.insert(key.to_string(), v.clone());
        }
    }
    if !overridden.is_empty() && !given.override_settings {
        let list: Vec<String> = overridden.iter().map(|d| format!("  {d}")).collect();
        return Err(Error::Config(format!(
            "--resume: the command line changes settings of the run in {}:\n{}\nLeave those \
             flags out to continue the run as it was, add --override to continue it with the new \
             values, or start a new run (another --checkpoint-dir, or --overwrite)",
            dir.display(),
            list.join("\n")
        )));
    }
    let mut args: TrainArgs =
        serde_json::from_value(serde_json::Value::Object(merged)).map_err(as_json)?;
    args.explicit = given.explicit.clone();
    let saved_batch = serde_json::from_value::<TrainArgs>(saved)
        .ok()
        .map(|a| a.batch_size());
    Ok(Resumed {
        path,
        checkpoint,
        args,
        overridden,
        saved_batch,
    })
}

impl Resumed {
    /// The checkpoint's training state, with what --override changed applied: a new learning
    /// rate from now on, a new seed's data order and dropout streams, and for a new batch size
    /// the data position moved to the same number of images (approximate: the epoch's order is
    /// cut into other batches).
    pub fn state(&self) -> Result<TrainState> {
        let mut state = self
            .checkpoint
            .train_state
            .clone()
            .ok_or_else(|| Error::Checkpoint {
                path: self.path.clone(),
                msg: "holds no training state".into(),
            })?;
        for d in &self.overridden {
            println!("notice: --override: {d}; the run continues with the command line's");
        }
        let changed = |flag: &str| self.overridden.iter().any(|d| d.flag == flag);
        if changed("--lr") {
            state.lr = self.args.lr;
        }
        if changed("--seed") {
            let seeded = TrainState::seeds(self.args.seed);
            state.rng = seeded.0;
            state.dropout_seed_base = seeded.1;
            state.data_seed = seeded.2;
        }
        if let Some(old) = self.saved_batch.filter(|&b| b != self.args.batch_size()) {
            state.batch_in_epoch =
                state.batch_in_epoch * old as u64 / self.args.batch_size() as u64;
        }
        Ok(state)
    }
}

/// A run's settings as JSON, as saved in its checkpoints. Written out and read back so that
/// numbers are the ones printed (an f32 0.01 becomes 0.01, not its f64 widening
/// 0.009999999776482582) and saved and given settings compare alike.
pub fn settings_json(args: &TrainArgs) -> Result<serde_json::Value> {
    let cannot =
        |e: serde_json::Error| Error::Config(format!("cannot record the run's settings: {e}"));
    serde_json::from_str(&serde_json::to_string(args).map_err(cannot)?).map_err(cannot)
}
