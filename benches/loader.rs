//! Loader speed, one core: decode+resize for preparation, crop/flip/PCA/mean for training.
//! Throughput is in images (criterion's "elements"), so elem/s = images/s per core.

use alexnet::data::{
    compute_stats, decode_resize, extract_view, pca_shift, sample_jpeg, Augment, Dataset, InMemory,
    Loader, LoaderConfig, Share, Synthetic, View,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;

fn prepare(c: &mut Criterion) {
    let jpeg = sample_jpeg(1).expect("benchmark JPEG");
    let mut g = c.benchmark_group("prepare");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_resize_jpeg_500x375_to_256", |b| {
        b.iter(|| decode_resize(&jpeg, 256, true).expect("decode"))
    });
    // The decoder alone, to show how the time splits between decoding and resampling.
    g.bench_function("decode_only_jpeg_500x375", |b| {
        b.iter(|| image::load_from_memory(&jpeg).expect("decode"))
    });
    g.finish();
}

fn augment(c: &mut Criterion) {
    let (side, crop) = (256, 227);
    let ds =
        InMemory::from_dataset(&Synthetic::new(10, 64, side, 3).expect("synthetic")).expect("copy");
    let stats = compute_stats(&ds, None).expect("stats");
    let mut g = c.benchmark_group("augment");
    g.throughput(Throughput::Elements(1));
    let mut img = vec![0u8; 3 * side * side];
    ds.read(5, &mut img).expect("read");
    let mut out = vec![0f32; 3 * crop * crop];
    g.bench_function("crop_flip_pca_mean_227", |b| {
        let shift = pca_shift(&stats, [0.1, -0.05, 0.02]);
        b.iter(|| {
            extract_view(
                &img,
                side,
                crop,
                View {
                    x: 13,
                    y: 7,
                    flip: true,
                },
                shift,
                Some(&stats.mean),
                &mut out,
            )
        })
    });
    // The whole per-image path of the loader on one thread (read from memory, RNG, augment).
    let ds: Arc<dyn Dataset> = Arc::new(ds);
    let stats = Arc::new(stats);
    g.throughput(Throughput::Elements(64));
    g.bench_function("loader_epoch_64_images_0_workers", |b| {
        b.iter(|| {
            let cfg = LoaderConfig {
                batch: 32,
                workers: 0,
                prefetch: 1,
                seed: 1,
                augment: Augment::train(crop),
                shuffle: true,
                drop_last: false,
                share: Share::WHOLE,
            };
            let mut l = Loader::new(ds.clone(), stats.clone(), cfg, 0, 0).expect("loader");
            while let Some(batch) = l.next() {
                batch.expect("batch");
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = prepare, augment
}
criterion_main!(benches);
