//! The background loader: worker threads build whole batches ahead of the consumer.
//!
//! Batch `b` of an epoch holds positions `b*batch .. (b+1)*batch` of the epoch's order (a shuffle
//! seeded by `(seed, epoch)`); the image at position `p` draws its crop, flip and lighting from
//! an RNG seeded by `(seed, epoch, p)`. So a batch's content depends only on `(seed, epoch, b)`:
//! not on the worker count, not on timing, and an epoch can resume at any batch exactly.
//!
//! Workers claim batch numbers in order but only while fewer than `prefetch` batches are ready or
//! in progress ahead of the consumer (a bounded queue); finished batches wait in a reorder buffer
//! until the consumer asks for them in order.

use super::augment::{draw_view, extract_view};
use super::{Batch, Dataset, LoaderConfig, Stats};
use crate::rng::{hash, Rng};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Stream labels, so the shuffle and the augmentation never share random numbers: the ASCII of
/// "SHUF" and "AUGM" (any two distinct labels would do; these read in a hex dump).
const SHUFFLE_STREAM: u64 = 0x5348_5546;
const AUGMENT_STREAM: u64 = 0x4155_474d;

/// Everything needed to build any batch of the epoch (read-only, shared by the workers).
struct Plan {
    dataset: Arc<dyn Dataset>,
    stats: Arc<Stats>,
    cfg: LoaderConfig,
    order: Vec<usize>,
    augment_seed: u64,
}

impl Plan {
    fn build(&self, b: usize, buf: &mut [u8]) -> Result<Batch> {
        let (side, crop) = (self.dataset.side(), self.cfg.augment.crop);
        let start = b * self.cfg.batch;
        let whole = (start + self.cfg.batch).min(self.order.len()) - start;
        let own = self.cfg.share.range(whole);
        let (lo, hi) = (start + own.start, start + own.end);
        let n = hi - lo;
        let per = 3 * crop * crop;
        let mut images = vec![0f32; n * per];
        let mut labels = Vec::with_capacity(n);
        let mean = self
            .cfg
            .augment
            .subtract_mean
            .then_some(self.stats.mean.as_slice());
        for (pos, out) in (lo..hi).zip(images.chunks_exact_mut(per)) {
            labels.push(self.dataset.read(self.order[pos], buf)?);
            let mut rng = Rng::new(hash(self.augment_seed, pos as u64));
            let (view, shift) = draw_view(&mut rng, side, &self.cfg.augment, &self.stats);
            extract_view(buf, side, crop, view, shift, mean, out);
        }
        Ok(Batch {
            images,
            labels,
            n,
            size: crop,
            indices: self.order[lo..hi].to_vec(),
        })
    }
}

struct State {
    /// Next batch a worker will claim.
    claimed: usize,
    /// Next batch the consumer will take.
    consumed: usize,
    ready: BTreeMap<usize, Result<Batch>>,
    stop: bool,
    alive: usize,
}

struct Shared {
    plan: Plan,
    end: usize,
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    /// A worker that panicked poisons the mutex; the state stays consistent (every update is a
    /// single assignment), so the others carry on and the consumer reports the lost worker.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Decrements the live-worker count however the worker ends (including a panic).
struct AliveGuard(Arc<Shared>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.lock().alive -= 1;
        self.0.cv.notify_all();
    }
}

fn worker(shared: Arc<Shared>) {
    let _guard = AliveGuard(shared.clone());
    let side = shared.plan.dataset.side();
    let mut buf = vec![0u8; 3 * side * side];
    loop {
        let b = {
            let mut st = shared.lock();
            loop {
                if st.stop || st.claimed >= shared.end {
                    return;
                }
                if st.claimed < st.consumed + shared.plan.cfg.prefetch {
                    break;
                }
                st = shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.claimed += 1;
            st.claimed - 1
        };
        let batch = shared.plan.build(b, &mut buf);
        shared.lock().ready.insert(b, batch);
        shared.cv.notify_all();
    }
}

/// Background loader: worker threads fill a bounded queue of ready batches for one epoch,
/// starting at batch `start_batch` (for exact resume). Dropping the loader stops its threads.
pub struct Loader {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    next: usize,
    /// Scratch image for `workers == 0`.
    buf: Vec<u8>,
}

impl Loader {
    pub fn new(
        dataset: Arc<dyn Dataset>,
        stats: Arc<Stats>,
        cfg: LoaderConfig,
        epoch: u64,
        start_batch: usize,
    ) -> Result<Loader> {
        let (side, crop) = (dataset.side(), cfg.augment.crop);
        if cfg.share.of == 0 || cfg.share.index >= cfg.share.of {
            return Err(Error::Config(format!(
                "loader: share {} of {} does not exist",
                cfg.share.index, cfg.share.of
            )));
        }
        if cfg.batch == 0 || cfg.prefetch == 0 {
            return Err(Error::Config(format!(
                "loader: batch ({}) and prefetch ({}) must be at least 1",
                cfg.batch, cfg.prefetch
            )));
        }
        if crop == 0 || crop > side {
            return Err(Error::Config(format!(
                "loader: crop {crop} must be in 1..={side} (the dataset's image side)"
            )));
        }
        if stats.side != side || stats.mean.len() != 3 * side * side {
            return Err(Error::Config(format!(
                "loader: statistics are for side {} ({} mean values), the dataset's images have side {side}",
                stats.side,
                stats.mean.len()
            )));
        }
        if dataset.is_empty() {
            return Err(Error::Config("loader: the dataset is empty".into()));
        }
        let len = dataset.len();
        let mut order: Vec<usize> = (0..len).collect();
        let epoch_seed = hash(cfg.seed, epoch);
        if cfg.shuffle {
            Rng::new(hash(epoch_seed, SHUFFLE_STREAM)).shuffle(&mut order);
        }
        let end = if cfg.drop_last {
            len / cfg.batch
        } else {
            len.div_ceil(cfg.batch)
        };
        if start_batch > end {
            return Err(Error::Config(format!(
                "loader: start batch {start_batch} is past the epoch's {end} batches"
            )));
        }
        let workers = cfg.workers;
        let shared = Arc::new(Shared {
            plan: Plan {
                dataset,
                stats,
                cfg,
                order,
                augment_seed: hash(epoch_seed, AUGMENT_STREAM),
            },
            end,
            state: Mutex::new(State {
                claimed: start_batch,
                consumed: start_batch,
                ready: BTreeMap::new(),
                stop: false,
                alive: workers,
            }),
            cv: Condvar::new(),
        });
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("loader-{i}"))
                .spawn(move || worker(s));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Threads already started exit once told to stop; this one never ran.
                    shared.lock().alive -= workers - i;
                    let loader = Loader {
                        shared,
                        threads,
                        next: start_batch,
                        buf: Vec::new(),
                    };
                    drop(loader);
                    return Err(Error::Config(format!(
                        "loader: cannot start a worker thread: {e}"
                    )));
                }
            }
        }
        Ok(Loader {
            shared,
            threads,
            next: start_batch,
            buf: if workers == 0 {
                vec![0; 3 * side * side]
            } else {
                Vec::new()
            },
        })
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.shared.end
    }

    /// Next batch of the epoch, None at its end. Also reports how long the caller waited
    /// (data-wait time; with `workers == 0` that is the whole time spent building the batch).
    #[allow(clippy::should_implement_trait)] // an Iterator would hide the wait time
    pub fn next(&mut self) -> Option<Result<(Batch, Duration)>> {
        if self.next >= self.shared.end {
            return None;
        }
        let t0 = Instant::now();
        let b = self.next;
        self.next += 1;
        if self.threads.is_empty() {
            let r = self.shared.plan.build(b, &mut self.buf);
            return Some(r.map(|batch| (batch, t0.elapsed())));
        }
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = st.ready.remove(&b) {
                st.consumed = b + 1;
                drop(st);
                self.shared.cv.notify_all();
                return Some(r.map(|batch| (batch, t0.elapsed())));
            }
            if st.alive == 0 {
                return Some(Err(Error::Config(format!(
                    "loader: every worker thread stopped before batch {b} was built (a worker panicked)"
                ))));
            }
            st = self.shared.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_all();
        for t in self.threads.drain(..) {
            // A worker's panic was already reported through `next`; nothing more to do here.
            let _ = t.join();
        }
    }
}
