//! The data-parallel gradient sync's bookkeeping without MPI: over a one-rank communicator the
//! all-reduce hands each bucket back as it went, so gradients handed over row by row during the
//! backward (into many small buckets) and copied back after it must come back bit for bit where
//! they were, on a whole net and on its columns split over two executors. A tensor copied back
//! to another tensor's place, or one left out, shows here; `tests/data_parallel.rs` runs the
//! same path over two ranks under mpirun.

use alexnet::arch::ArchConfig;
use alexnet::data_parallel::Replicas;
use alexnet::dist::Comm;
use alexnet::engine::cpu::CpuEngine;
use alexnet::model::Init;
use alexnet::parallel::Network;
use alexnet::rng::Rng;
use alexnet::trainer::GradientSync;

fn gradients_come_back_in_place(engines: &[CpuEngine], split: bool) {
    let cfg = ArchConfig {
        classes: 10,
        input_size: 67,
        ..Default::default()
    };
    let n = 2;
    let mut rng = Rng::new(3);
    let mut net = Network::new(engines, split, cfg, Init::Caffe, 5, n).unwrap();
    let comm = Comm::Single;
    // 64 KB buckets: conv1's weights (140 KB) fill one alone, the small layers share.
    let mut sync = Replicas::new(&comm).with_bucket_bytes(64 << 10);
    // Three steps on other images: handed over during the backward, not handed over (the sync
    // gathers everything after it, into buckets cut a little differently), handed over again;
    // the later steps refill the earlier steps' buffers, whose stale tails must not leak.
    for (step, hand_over) in [true, false, true].into_iter().enumerate() {
        let images: Vec<f32> = (0..n * 3 * 67 * 67)
            .map(|_| (rng.normal() * 50.0) as f32)
            .collect();
        let labels = [1 + step as u32, 7];
        let seed = Some(9 + step as u64);
        net.forward(engines, &images, seed).unwrap();
        net.backward(engines, &labels, seed).unwrap();
        let plain = net.read_grads(engines).unwrap();

        let mut handed = 0;
        net.forward(engines, &images, seed).unwrap();
        net.backward_with(engines, &labels, seed, &mut |ready| {
            handed += ready.len();
            if hand_over {
                sync.gradients_ready(ready)
            } else {
                Ok(())
            }
        })
        .unwrap();
        sync.average_gradients(engines, &mut net).unwrap();
        assert_eq!(handed, net.params_mut(engines).len());
        assert_eq!(net.read_grads(engines).unwrap(), plain, "step {step}");
    }
}

#[test]
fn gradients_come_back_in_place_on_a_whole_net() {
    gradients_come_back_in_place(&[CpuEngine::new(2).unwrap()], false);
}

#[test]
fn gradients_come_back_in_place_on_split_columns() {
    let engines = [CpuEngine::new(1).unwrap(), CpuEngine::new(1).unwrap()];
    gradients_come_back_in_place(&engines, true);
}
