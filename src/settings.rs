//! The settings of a run as flags: the range of every numeric flag (checked while the command line
//! is parsed, so a bad value is an error before any work), and on `--resume`, which settings come
//! from the checkpoint and which the command line may change.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A finite number above zero (`--lr`).
pub fn positive(s: &str) -> std::result::Result<f32, String> {
    number(s).and_then(|v| is_positive(v).map(|()| v))
}

/// A finite number of at least zero (`--weight-decay`).
pub fn non_negative(s: &str) -> std::result::Result<f32, String> {
    number(s).and_then(|v| is_non_negative(v).map(|()| v))
}

/// A number in [0, 1): a probability that leaves something (`--dropout`), a momentum that
/// decays (`--momentum`: at 1 or more the velocity never forgets and SGD diverges).
pub fn below_one(s: &str) -> std::result::Result<f32, String> {
    number(s).and_then(|v| is_below_one(v).map(|()| v))
}

/// A number in (0, 1] (`--lars-eta`, a coefficient on a ratio of norms).
pub fn unit_fraction(s: &str) -> std::result::Result<f32, String> {
    number(s).and_then(|v| is_unit_fraction(v).map(|()| v))
}

/// Epochs of warmup (`--warmup-epochs`): 0 (none) up to [`MAX_WARMUP_EPOCHS`].
pub fn warmup_epochs(s: &str) -> std::result::Result<f32, String> {
    number(s).and_then(|v| is_warmup_epochs(v).map(|()| v))
}

/// Far above the 5 of Goyal et al. and any run's length; keeps the warmup's step count finite.
pub const MAX_WARMUP_EPOCHS: f32 = 1000.0;

/// The check behind [`unit_fraction`].
pub fn is_unit_fraction(v: f32) -> std::result::Result<(), String> {
    match v > 0.0 && v <= 1.0 {
        true => Ok(()),
        false => Err(format!("must be above 0 and at most 1 (got {v})")),
    }
}

/// The check behind [`warmup_epochs`].
pub fn is_warmup_epochs(v: f32) -> std::result::Result<(), String> {
    match (0.0..=MAX_WARMUP_EPOCHS).contains(&v) {
        true => Ok(()),
        false => Err(format!(
            "must be 0 or more and at most {MAX_WARMUP_EPOCHS} (got {v})"
        )),
    }
}

/// The checks behind [`positive`], for values that did not come through the parser (settings
/// read back from a checkpoint, or set by a library user).
pub fn is_positive(v: f32) -> std::result::Result<(), String> {
    match v.is_finite() && v > 0.0 {
        true => Ok(()),
        false => Err(format!("must be a finite number above 0 (got {v})")),
    }
}

/// The check behind [`non_negative`].
pub fn is_non_negative(v: f32) -> std::result::Result<(), String> {
    match v.is_finite() && v >= 0.0 {
        true => Ok(()),
        false => Err(format!("must be a finite number, 0 or more (got {v})")),
    }
}

/// The check behind [`below_one`].
pub fn is_below_one(v: f32) -> std::result::Result<(), String> {
    match (0.0..1.0).contains(&v) {
        true => Ok(()),
        false => Err(format!("must be in [0, 1) (got {v})")),
    }
}

/// Seconds: a finite number above zero, at most a day.
pub fn seconds(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!("must be above 0 and at most 86400 (got {v})"))
    }
}

fn number(s: &str) -> std::result::Result<f32, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))
}

/// Threads or loader workers: 0 (one per core) up to this many.
pub const MAX_THREADS: u64 = 1024;

/// Images per batch, input side and classes: bounds far above any real use that keep every size
/// computed from them well inside 64 bits.
pub const MAX_BATCH: u64 = 1 << 20;
pub const MAX_INPUT: u64 = 1 << 16;
pub const MAX_CLASSES: u64 = 1 << 20;
/// Executors (GPUs) a net's columns are spread over.
pub const MAX_EXECUTORS: u64 = 64;

/// A count of at least `min` (`--batch-size`: 1, `--classes`: 2).
pub fn count(min: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(min..)
}

/// A count in `min..=max` (threads, workers).
pub fn count_in(min: u64, max: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(min..=max)
}

/// The ids (field names) of the flags given on the command line, as opposed to defaults.
pub fn explicit_flags(matches: &clap::ArgMatches) -> Vec<String> {
    matches
        .ids()
        .filter(|id| {
            matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })
        .map(|id| id.as_str().to_string())
        .collect()
}

/// `--lr`'s name for a field `lr`.
pub fn flag_name(field: &str) -> String {
    format!("--{}", field.replace('_', "-"))
}

/// A setting the command line gives differently from the checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    pub flag: String,
    pub saved: Value,
    pub given: Value,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Value| match v {
            Value::Null => "(not set)".to_string(),
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        write!(
            f,
            "{}: the run has {}, the command line {}",
            self.flag,
            show(&self.saved),
            show(&self.given)
        )
    }
}

/// The settings of a resumed run: each comes from `saved` (the checkpoint) unless its flag is in
/// `explicit` (given on the command line). A given flag in `may_change` (budget, machinery,
/// output paths) takes the given value; any other given flag whose value differs from the saved
/// one is returned as a [`Difference`], with the given value in the result, for the caller to
/// refuse or, with `--override`, to take. Settings the checkpoint does not know (added since it
/// was written) keep the given value.
pub fn merge_resumed(
    saved: &Value,
    given: &Value,
    explicit: &BTreeSet<String>,
    may_change: &[&str],
) -> Result<(Map<String, Value>, Vec<Difference>)> {
    let (Some(saved), Some(given)) = (saved.as_object(), given.as_object()) else {
        return Err(Error::Config(
            "the run's saved settings are not a JSON object".into(),
        ));
    };
    let mut merged = given.clone();
    let mut differences = Vec::new();
    for (key, given_value) in given {
        let Some(saved_value) = saved.get(key) else {
            continue;
        };
        if !explicit.contains(key) {
            merged.insert(key.clone(), saved_value.clone());
        } else if !may_change.contains(&key.as_str()) && saved_value != given_value {
            differences.push(Difference {
                flag: flag_name(key),
                saved: saved_value.clone(),
                given: given_value.clone(),
            });
        }
    }
    Ok((merged, differences))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ranges_refuse_what_they_should() {
        assert_eq!(positive("0.01"), Ok(0.01));
        for bad in ["0", "-1", "nan", "inf", "-inf", "", "x", "1e39"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-0.1").is_err());
        assert_eq!(below_one("0.9"), Ok(0.9));
        for bad in ["1", "2", "-0.5", "nan"] {
            assert!(below_one(bad).is_err(), "{bad}");
        }
        assert_eq!(unit_fraction("1"), Ok(1.0));
        for bad in ["0", "1.5", "-0.001", "nan"] {
            assert!(unit_fraction(bad).is_err(), "{bad}");
        }
        assert_eq!(warmup_epochs("0"), Ok(0.0));
        assert_eq!(warmup_epochs("0.5"), Ok(0.5));
        for bad in ["-1", "1001", "inf", "nan"] {
            assert!(warmup_epochs(bad).is_err(), "{bad}");
        }
        assert!(seconds("0").is_err() && seconds("1e300").is_err() && seconds("3").is_ok());
    }

    #[test]
    fn resumed_settings_come_from_the_checkpoint_unless_they_may_change() {
        let saved = json!({"lr": 0.01, "seed": 1, "steps": 10, "epochs": 3, "batch_size": 8});
        let given =
            json!({"lr": 0.02, "seed": 5, "steps": 20, "epochs": 9, "batch_size": 8, "new": true});
        let explicit: BTreeSet<String> = ["lr", "steps", "batch_size"].map(String::from).into();
        let (merged, diff) =
            merge_resumed(&saved, &given, &explicit, &["steps", "epochs"]).unwrap();
        // --lr was given and differs: reported, left at the given value for --override.
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].flag, "--lr");
        assert_eq!(
            diff[0].to_string(),
            "--lr: the run has 0.01, the command line 0.02"
        );
        assert_eq!(merged["lr"], json!(0.02));
        // --seed was not given: the run's. --steps may change and was given; --epochs may
        // change but was not given, so the run's budget stands. --batch-size agrees.
        assert_eq!(merged["seed"], json!(1));
        assert_eq!(merged["steps"], json!(20));
        assert_eq!(merged["epochs"], json!(3));
        assert_eq!(merged["batch_size"], json!(8));
        // A setting the checkpoint predates keeps the command line's value.
        assert_eq!(merged["new"], json!(true));
    }
}
