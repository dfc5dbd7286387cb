//! Shared test code, a module of `tests/suite` and of each test binary of its own (`mod common;`),
//! each of which uses only some of it, hence the allowance.
#![allow(dead_code)]

pub mod ops_suite;

use clap::{CommandFactory, FromArgMatches, Parser};

/// `train`'s flags as a command line of their own.
#[derive(Parser)]
struct TrainCli {
    #[command(flatten)]
    args: alexnet::train::TrainArgs,
}

/// `train --quiet EXTRA...` parsed as the CLI parses it, with the flags given marked as given
/// (a resumed run compares those with its saved settings).
pub fn try_train_args(extra: &[&str]) -> Result<alexnet::train::TrainArgs, clap::Error> {
    let mut argv = vec!["train", "--quiet"];
    argv.extend_from_slice(extra);
    let matches = TrainCli::command().try_get_matches_from(argv)?;
    let mut args = TrainCli::from_arg_matches(&matches)?.args;
    args.explicit = alexnet::settings::explicit_flags(&matches);
    Ok(args)
}

/// [`try_train_args`] for flags known to parse.
pub fn train_args(extra: &[&str]) -> alexnet::train::TrainArgs {
    try_train_args(extra).expect("test flags parse")
}

/// Norm-wise relative difference ‖a − b‖ / ‖b‖ over a whole tensor, in f64.
pub fn rel_err<T: Copy + Into<f64>>(a: &[f32], b: &[T]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y.into()).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| y.into().powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Trains `steps` steps on distinct random batches twice from the same start: uploading each batch
/// as its forward begins, and prefetching it during the step before (as `train` does); returns
/// the (losses, final parameters) of both. The two must agree bit for bit: they are the same
/// ops on the same values, and a prefetch that clobbered the input the backward still reads, or a
/// forward on the wrong buffer, changes them.
pub fn uploaded_and_prefetched_runs<E: alexnet::engine::Engine>(
    engines: &[E],
    split: bool,
    cfg: &alexnet::arch::ArchConfig,
    n: usize,
    steps: usize,
) -> [(Vec<f32>, alexnet::model::HostTensors); 2] {
    use alexnet::model::{Init, Sgd};
    use alexnet::parallel::Network;
    let mut rng = alexnet::rng::Rng::new(31);
    let batches: Vec<(Vec<f32>, Vec<u32>)> = (0..steps)
        .map(|_| {
            let images = (0..n * 3 * cfg.input_size * cfg.input_size)
                .map(|_| (rng.normal() * 50.0) as f32)
                .collect();
            let labels = (0..n).map(|_| rng.below(cfg.classes) as u32).collect();
            (images, labels)
        })
        .collect();
    let run = |prefetch: bool| {
        let mut net = Network::new(engines, split, cfg.clone(), Init::Caffe, 5, n).unwrap();
        let mut losses = Vec::new();
        if prefetch {
            net.prefetch_input(engines, &batches[0].0).unwrap();
        }
        for (i, (images, labels)) in batches.iter().enumerate() {
            let seed = Some(100 + i as u64);
            if prefetch {
                net.forward_prefetched(engines, seed).unwrap();
                if let Some((next, _)) = batches.get(i + 1) {
                    net.prefetch_input(engines, next).unwrap();
                }
            } else {
                net.forward(engines, images, seed).unwrap();
            }
            losses.push(net.backward(engines, labels, seed).unwrap());
            net.sgd_step(engines, 0.01, &Sgd::default()).unwrap();
        }
        (losses, net.read_params(engines).unwrap())
    };
    [run(false), run(true)]
}
