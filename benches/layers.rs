//! Every layer of the paper's AlexNet on the CPU engine, forward and backward, at batch 1 and 128,
//! in GFLOP/s (criterion's throughput is FLOPs as "elements"; a plain `GFLOP/s` line is printed
//! too), plus a large square GEMM with one and two threads to read them against.
//!
//! `cargo bench --bench layers` takes about 3-5 minutes on 2 cores: few samples, short
//! measurement times (a batch-128 convolution backward is ~0.5 s per iteration). Filter as usual:
//! `cargo bench --bench layers -- conv2`. LRN and pooling report elements per second instead
//! (they are memory-bound; their FLOP counts mean little).

use std::time::{Duration, Instant};

use alexnet::engine::cpu::CpuEngine;
use alexnet::engine::{ConvShape, Engine, FcShape, LrnParams, LrnShape, PoolShape};
use alexnet::rng::Rng;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Random buffer (the values do not matter for speed, but denormals or zeros could).
fn buf(e: &CpuEngine, len: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let v: Vec<f32> = (0..len)
        .map(|_| (rng.uniform() * 2.0 - 1.0) as f32)
        .collect();
    let mut b = e.alloc(len).unwrap();
    e.upload(&mut b, &v).unwrap();
    b
}

/// What one iteration does: FLOPs (GEMM layers) or elements (memory-bound layers).
#[derive(Clone, Copy)]
enum Work {
    Flops(u64),
    Elems(u64),
}

/// Benches `f` under `name`, prints its best time per iteration and rate, returns the seconds.
fn run(g: &mut Group, name: &str, work: Work, mut f: impl FnMut()) -> f64 {
    let n = match work {
        Work::Flops(n) | Work::Elems(n) => n,
    };
    g.throughput(Throughput::Elements(n));
    let mut best = f64::INFINITY;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            let d = t.elapsed();
            best = best.min(d.as_secs_f64() / iters as f64);
            d
        })
    });
    if best.is_finite() {
        match work {
            Work::Flops(n) => println!(
                "RATE {name}: {:.2} ms, {:.1} GFLOP/s",
                best * 1e3,
                n as f64 / best / 1e9
            ),
            Work::Elems(n) => println!(
                "RATE {name}: {:.2} ms, {:.0} Melem/s",
                best * 1e3,
                n as f64 / best / 1e6
            ),
        }
        best
    } else {
        0.0
    }
}

/// The paper's two-column net (Figure 2; groups = 2 where a layer reads only its own column).
fn convs(n: usize) -> [(&'static str, ConvShape); 5] {
    let c = |c_in, hw, c_out, k, stride, pad, groups| ConvShape {
        n,
        c_in,
        h: hw,
        w: hw,
        c_out,
        kh: k,
        kw: k,
        stride,
        pad,
        groups,
    };
    [
        ("conv1", c(3, 227, 96, 11, 4, 0, 1)),
        ("conv2", c(96, 27, 256, 5, 1, 2, 2)),
        ("conv3", c(256, 13, 384, 3, 1, 1, 1)),
        ("conv4", c(384, 13, 384, 3, 1, 1, 2)),
        ("conv5", c(384, 13, 256, 3, 1, 1, 2)),
    ]
}

fn fcs(n: usize) -> [(&'static str, FcShape); 3] {
    let f = |d_in, d_out| FcShape { n, d_in, d_out };
    [
        ("fc6", f(9216, 4096)),
        ("fc7", f(4096, 4096)),
        ("fc8", f(4096, 1000)),
    ]
}

fn layers(c: &mut Criterion) {
    let e = CpuEngine::new(0).unwrap();
    println!("engine: {}", e.name());
    for n in [1usize, 128] {
        let mut g = c.benchmark_group(format!("batch{n}"));
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(if n == 1 { 1 } else { 2 }));
        // Seconds per layer pass, summed into a forward+backward estimate at the end.
        let mut step = 0.0;

        for (name, s) in convs(n) {
            let flops = Work::Flops(2 * s.macs());
            let (x, w, b, dy) = (
                buf(&e, s.x_len(), 1),
                buf(&e, s.w_len(), 2),
                buf(&e, s.c_out, 3),
                buf(&e, s.y_len(), 4),
            );
            let (mut y, mut dx) = (e.alloc(s.y_len()).unwrap(), e.alloc(s.x_len()).unwrap());
            let (mut dw, mut db) = (e.alloc(s.w_len()).unwrap(), e.alloc(s.c_out).unwrap());
            step += run(&mut g, &format!("{name}/forward"), flops, || {
                e.conv_forward(&s, &x, &w, &b, &mut y).unwrap()
            });
            if name != "conv1" {
                // conv1's input gradient is never needed (the input is data).
                step += run(&mut g, &format!("{name}/backward_data"), flops, || {
                    e.conv_backward_data(&s, &dy, &w, &mut dx).unwrap()
                });
            }
            step += run(&mut g, &format!("{name}/backward_weights"), flops, || {
                e.conv_backward_weights(&s, &x, &dy, &mut dw, &mut db)
                    .unwrap()
            });
        }

        for (name, s) in fcs(n) {
            let flops = 2 * (s.n * s.d_in * s.d_out) as u64;
            let (x, w, b, dy) = (
                buf(&e, s.n * s.d_in, 5),
                buf(&e, s.d_in * s.d_out, 6),
                buf(&e, s.d_out, 7),
                buf(&e, s.n * s.d_out, 8),
            );
            let (mut y, mut dx) = (
                e.alloc(s.n * s.d_out).unwrap(),
                e.alloc(s.n * s.d_in).unwrap(),
            );
            let (mut dw, mut db) = (
                e.alloc(s.d_in * s.d_out).unwrap(),
                e.alloc(s.d_out).unwrap(),
            );
            step += run(
                &mut g,
                &format!("{name}/forward"),
                Work::Flops(flops),
                || e.fc_forward(&s, &x, &w, &b, &mut y).unwrap(),
            );
            step += run(
                &mut g,
                &format!("{name}/backward"),
                Work::Flops(2 * flops),
                || {
                    e.fc_backward(&s, &x, &w, &dy, Some(&mut dx), &mut dw, &mut db)
                        .unwrap()
                },
            );
        }

        let lrns = [
            (
                "lrn1",
                LrnShape {
                    n,
                    c: 96,
                    h: 55,
                    w: 55,
                    groups: 2,
                },
            ),
            (
                "lrn2",
                LrnShape {
                    n,
                    c: 256,
                    h: 27,
                    w: 27,
                    groups: 2,
                },
            ),
        ];
        for (name, s) in lrns {
            let p = LrnParams::PAPER;
            let (x, dy) = (buf(&e, s.len(), 9), buf(&e, s.len(), 10));
            let (mut y, mut scale, mut dx) = (
                e.alloc(s.len()).unwrap(),
                e.alloc(s.len()).unwrap(),
                e.alloc(s.len()).unwrap(),
            );
            let elems = Work::Elems(s.len() as u64);
            step += run(&mut g, &format!("{name}/forward"), elems, || {
                e.lrn_forward(&s, &p, &x, &mut y, &mut scale).unwrap()
            });
            step += run(&mut g, &format!("{name}/backward"), elems, || {
                e.lrn_backward(&s, &p, &x, &y, &scale, &dy, &mut dx)
                    .unwrap()
            });
        }

        let pools = [("pool1", 96, 55), ("pool2", 256, 27), ("pool5", 256, 13)];
        for (name, c, hw) in pools {
            let s = PoolShape {
                n,
                c,
                h: hw,
                w: hw,
                size: 3,
                stride: 2,
            };
            let (x, dy) = (buf(&e, s.x_len(), 11), buf(&e, s.y_len(), 12));
            let (mut y, mut dx) = (e.alloc(s.y_len()).unwrap(), e.alloc(s.x_len()).unwrap());
            e.maxpool_forward(&s, &x, &mut y).unwrap();
            let elems = Work::Elems(s.x_len() as u64);
            step += run(&mut g, &format!("{name}/forward"), elems, || {
                e.maxpool_forward(&s, &x, &mut y).unwrap()
            });
            step += run(&mut g, &format!("{name}/backward"), elems, || {
                e.maxpool_backward(&s, &x, &y, &dy, &mut dx).unwrap()
            });
        }
        g.finish();
        if step > 0.0 {
            println!(
                "SUM batch {n}: conv+fc+lrn+pool forward+backward {:.1} ms = {:.1} images/s (ReLU, dropout, loss, SGD not included)",
                step * 1e3,
                n as f64 / step
            );
        }
    }
}

/// A large square GEMM through the fully connected layer (one GEMM plus a bias add): with one
/// thread it is one plain single-threaded sgemm stream, with two the engine's column split (two
/// concurrent single-threaded streams). The machine's fp32 peak is ~200 GFLOP/s (2 cores).
fn gemm_peak(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_peak");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let d = 2048;
    let s = FcShape {
        n: d,
        d_in: d,
        d_out: d,
    };
    for threads in [1, 2] {
        let e = CpuEngine::new(threads).unwrap();
        let (x, w, b) = (buf(&e, d * d, 1), buf(&e, d * d, 2), buf(&e, d, 3));
        let mut y = e.alloc(d * d).unwrap();
        let flops = Work::Flops(2 * (d * d * d) as u64);
        run(&mut g, &format!("sgemm{d}/threads{threads}"), flops, || {
            e.fc_forward(&s, &x, &w, &b, &mut y).unwrap()
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = gemm_peak, layers
}
criterion_main!(benches);
