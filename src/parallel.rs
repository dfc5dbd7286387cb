//! Model parallelism as in Section 3.2: the network's columns (the paper's two GPUs) run on
//! separate executors, each holding its share of every layer's kernels. Activations cross
//! between executors only at the rows that read all columns (the architecture table's
//! `reads_all_columns`: conv3, fc6, fc7, fc8 in the paper) and at the loss, forward and backward.
//!
//! Each column is a [`Model`] built from [`ArchConfig::column_plan`]. [`ColumnModel`] runs the
//! columns row by row, one host thread per column (each drives its own executor: a CPU engine
//! with its share of the cores, or a GPU), and gathers between rows. The function is exactly the
//! one-executor [`Model`]'s: same initial weights (each column draws its slice of every tensor),
//! same dropout masks ([`crate::engine::MaskSlice`]), same checkpoint tensors (the columns'
//! slices are concatenated on save and cut on load).
//!
//! [`Network`] is what the trainer and evaluation hold: one [`Model`] on one executor, or a
//! [`ColumnModel`] over several; both implement [`NetworkOps`], the methods they are driven by.

use std::thread;

use crate::arch::ArchConfig;
use crate::engine::{Blocks, Engine};
use crate::error::{Error, Result};
use crate::model::{check_labels, two, HostTensors, Init, Model, OnReady, Param, Sgd};

/// Bytes moved by the last training step (forward, loss and backward).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Between different columns: what would cross between devices with one column per device
    /// (the paper's design quantity).
    pub between_columns: u64,
    /// Between different executors, as the columns are actually placed.
    pub between_executors: u64,
}

/// Which executor runs each of `columns` columns when `executors` are available: column `c` on
/// executor `c * executors / columns` (one each, or all on one).
pub fn assign_columns(columns: usize, executors: usize) -> Result<Vec<usize>> {
    if executors == 0 || executors > columns {
        return Err(Error::Config(format!(
            "a {columns}-column network runs on 1..={columns} devices, asked for {executors}"
        )));
    }
    Ok((0..columns).map(|c| c * executors / columns).collect())
}

/// The columns of one network, each on its executor.
pub struct ColumnModel<E: Engine> {
    pub cfg: ArchConfig,
    columns: Vec<Model<E>>,
    /// Executor of each column: an index into the `engines` every call receives.
    executor: Vec<usize>,
    /// The whole logits [N, classes], their softmax and its gradient, on column 0's executor.
    logits: E::Buf,
    probs: E::Buf,
    dlogits: E::Buf,
    /// recv[c][k]: where column c receives the other columns' gradient blocks for its output
    /// feeding the k-th cross-column row, before summing them.
    recv: Vec<Vec<E::Buf>>,
    traffic: Traffic,
}

impl<E: Engine> ColumnModel<E> {
    /// The network split into its columns, column `c` on `engines[executor[c]]`, initialised
    /// exactly as [`Model::new`] with the same `init` and `seed`.
    pub fn new(
        engines: &[E],
        executor: Vec<usize>,
        cfg: ArchConfig,
        init: Init,
        seed: u64,
        batch: usize,
    ) -> Result<Self> {
        let cols = cfg.columns();
        if executor.len() != cols || executor.iter().any(|&x| x >= engines.len()) {
            return Err(Error::Config(format!(
                "column placement {executor:?} does not fit {cols} columns on {} executors",
                engines.len()
            )));
        }
        let columns = (0..cols)
            .map(|c| Model::column(&engines[executor[c]], cfg.clone(), c, init, seed, batch))
            .collect::<Result<Vec<_>>>()?;
        let e0 = &engines[executor[0]];
        let mut model = ColumnModel {
            cfg,
            columns,
            executor,
            logits: e0.alloc(0)?,
            probs: e0.alloc(0)?,
            dlogits: e0.alloc(0)?,
            recv: Vec::new(),
            traffic: Traffic::default(),
        };
        model.alloc_batch_buffers(engines)?;
        Ok(model)
    }

    pub fn batch(&self) -> usize {
        self.columns[0].batch()
    }

    fn engine<'a>(&self, engines: &'a [E], column: usize) -> &'a E {
        &engines[self.executor[column]]
    }

    /// The cross-column rows (indices into the table).
    fn gather_rows(&self) -> Vec<usize> {
        let steps = &self.columns[0].steps;
        (0..steps.len()).filter(|&r| steps[r].row.gather).collect()
    }

    fn alloc_batch_buffers(&mut self, engines: &[E]) -> Result<()> {
        let n = self.batch();
        let classes = self.cfg.classes;
        let e0 = self.engine(engines, 0);
        self.logits = e0.alloc(n * classes)?;
        self.probs = e0.alloc(n * classes)?;
        self.dlogits = e0.alloc(n * classes)?;
        let rows = self.gather_rows();
        self.recv = (0..self.columns.len())
            .map(|c| {
                let e = self.engine(engines, c);
                rows.iter()
                    .map(|&r| e.alloc(n * self.columns[c].steps[r - 1].row.plan.output.len()))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Runs `f` on every column at once, each on its own thread and executor.
    fn par_columns<F>(&mut self, engines: &[E], f: F) -> Result<()>
    where
        F: Fn(&mut Model<E>, &E) -> Result<()> + Sync,
    {
        let executor = &self.executor;
        if self.columns.len() == 1 {
            return f(&mut self.columns[0], &engines[executor[0]]);
        }
        thread::scope(|scope| {
            let f = &f;
            let handles: Vec<_> = self
                .columns
                .iter_mut()
                .zip(executor)
                .map(|(m, &x)| {
                    let e = &engines[x];
                    scope.spawn(move || f(m, e))
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .try_for_each(|(c, h)| match h.join() {
                    Ok(result) => result,
                    Err(_) => Err(Error::Config(format!(
                        "column {c}'s thread panicked (a bug: please report it)"
                    ))),
                })
        })
    }

    /// Copies `b` from column `src`'s buffer to column `dst`'s, counting the bytes that cross.
    #[allow(clippy::too_many_arguments)]
    fn move_blocks(
        traffic: &mut Traffic,
        executor: &[usize],
        engines: &[E],
        dst_col: usize,
        dst: &mut E::Buf,
        src_col: usize,
        src: &E::Buf,
        b: &Blocks,
    ) -> Result<()> {
        let (dx, sx) = (executor[dst_col], executor[src_col]);
        engines[dx].copy_blocks_from(dst, &engines[sx], src, b)?;
        let bytes = (b.floats() * std::mem::size_of::<f32>()) as u64;
        if dst_col != src_col {
            traffic.between_columns += bytes;
        }
        if dx != sx {
            traffic.between_executors += bytes;
        }
        Ok(())
    }

    /// Forward of cross-column row `r`: every column's input becomes all columns' outputs of
    /// row `r - 1`, concatenated along channels (per image).
    fn gather_forward(&mut self, engines: &[E], r: usize) -> Result<()> {
        let cols = self.columns.len();
        for c in 0..cols {
            for s in 0..cols {
                let prev = &self.columns[s].steps[r - 1];
                let (src_idx, dims, first) =
                    (prev.output, prev.row.plan.output, prev.row.out.start);
                let plane = dims.h * dims.w;
                let dst_step = &self.columns[c].steps[r];
                let dst_idx = dst_step.input;
                let b = Blocks {
                    count: self.batch(),
                    len: dims.len(),
                    src_offset: 0,
                    src_stride: dims.len(),
                    dst_offset: first * plane,
                    dst_stride: dst_step.row.plan.input.len(),
                };
                let (dst, src) = if c == s {
                    let m = &mut self.columns[c];
                    let (d, s) = two(&mut m.acts, dst_idx, src_idx);
                    (d, &*s)
                } else {
                    let (mc, ms) = two(&mut self.columns, c, s);
                    (&mut mc.acts[dst_idx], &ms.acts[src_idx])
                };
                Self::move_blocks(
                    &mut self.traffic,
                    &self.executor,
                    engines,
                    c,
                    dst,
                    s,
                    src,
                    &b,
                )?;
            }
        }
        Ok(())
    }

    /// Backward of cross-column row `r` (after every column ran its backward): the gradient of
    /// column s's output of row `r - 1` is the sum over all columns of their block s of the
    /// gradient of the gathered input.
    fn gather_backward(&mut self, engines: &[E], r: usize, k: usize) -> Result<()> {
        let cols = self.columns.len();
        for s in 0..cols {
            let prev = &self.columns[s].steps[r - 1];
            let (dst_idx, dims, first) = (prev.output, prev.row.plan.output, prev.row.out.start);
            let plane = dims.h * dims.w;
            // Own block first (overwrites), then the others' blocks, received and added.
            for c in std::iter::once(s).chain((0..cols).filter(|&c| c != s)) {
                let src_step = &self.columns[c].steps[r];
                let src_idx = src_step.input;
                let b = Blocks {
                    count: self.batch(),
                    len: dims.len(),
                    src_offset: first * plane,
                    src_stride: src_step.row.plan.input.len(),
                    dst_offset: 0,
                    dst_stride: dims.len(),
                };
                if c == s {
                    let m = &mut self.columns[s];
                    let (d, src) = two(&mut m.grads, dst_idx, src_idx);
                    Self::move_blocks(
                        &mut self.traffic,
                        &self.executor,
                        engines,
                        s,
                        d,
                        c,
                        src,
                        &b,
                    )?;
                } else {
                    let recv = &mut self.recv[s][k];
                    Self::move_blocks(
                        &mut self.traffic,
                        &self.executor,
                        engines,
                        s,
                        recv,
                        c,
                        &self.columns[c].grads[src_idx],
                        &b,
                    )?;
                    engines[self.executor[s]].add(&mut self.columns[s].grads[dst_idx], recv)?;
                }
            }
        }
        Ok(())
    }

    /// Column `c`'s classes among the logits, and the index of its buffer holding them.
    fn logit_share(&self, c: usize) -> (std::ops::Range<usize>, usize) {
        let last = self.columns[c].steps.last().expect("a network has rows");
        (last.row.out.clone(), last.output)
    }

    /// The whole logits, gathered from the columns' shares of the last row onto column 0's
    /// executor.
    fn gather_logits(&mut self, engines: &[E]) -> Result<()> {
        let (n, classes) = (self.batch(), self.cfg.classes);
        for c in 0..self.columns.len() {
            let (out, idx) = self.logit_share(c);
            let b = Blocks {
                count: n,
                len: out.len(),
                src_offset: 0,
                src_stride: out.len(),
                dst_offset: out.start,
                dst_stride: classes,
            };
            Self::move_blocks(
                &mut self.traffic,
                &self.executor,
                engines,
                0,
                &mut self.logits,
                c,
                &self.columns[c].acts[idx],
                &b,
            )?;
        }
        Ok(())
    }

    fn forward_rows(&mut self, engines: &[E], train_seed: Option<u64>) -> Result<()> {
        self.traffic = Traffic::default();
        for r in 0..self.columns[0].steps.len() {
            if self.columns[0].steps[r].row.gather {
                self.gather_forward(engines, r)?;
            }
            self.par_columns(engines, |m, e| m.forward_row(e, r, train_seed))?;
        }
        self.gather_logits(engines)
    }

    /// Whole tensors (every column's rows, in order), named and shaped as [`Model`]'s.
    fn read_whole(
        &self,
        engines: &[E],
        read: impl Fn(&Model<E>, &E) -> Result<HostTensors>,
    ) -> Result<HostTensors> {
        let parts = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, m)| read(m, self.engine(engines, c)))
            .collect::<Result<Vec<_>>>()?;
        let mut whole = parts[0].clone();
        for part in &parts[1..] {
            for ((_, shape, values), (_, s, v)) in whole.iter_mut().zip(part) {
                shape[0] += s[0];
                values.extend_from_slice(v);
            }
        }
        Ok(whole)
    }
}

impl<E: Engine> NetworkOps<E> for ColumnModel<E> {
    fn cfg(&self) -> &ArchConfig {
        &self.cfg
    }

    /// Bytes moved by the last forward + backward.
    fn traffic(&self) -> Traffic {
        self.traffic
    }

    fn set_batch(&mut self, engines: &[E], n: usize) -> Result<()> {
        if n == self.batch() {
            return Ok(());
        }
        for c in 0..self.columns.len() {
            let e = &engines[self.executor[c]];
            self.columns[c].set_batch(e, n)?;
        }
        self.alloc_batch_buffers(engines)
    }

    /// logits = net(images); see [`Model::forward`].
    fn forward(&mut self, engines: &[E], images: &[f32], train_seed: Option<u64>) -> Result<()> {
        // Every column sees the whole image (conv1 reads all three channels in both columns).
        self.par_columns(engines, |m, e| m.upload_input(e, images))?;
        self.forward_rows(engines, train_seed)
    }

    /// Uploads the next batch into every column's second input buffer; see
    /// [`Model::prefetch_input`].
    fn prefetch_input(&mut self, engines: &[E], images: &[f32]) -> Result<()> {
        self.par_columns(engines, |m, e| m.prefetch_input(e, images))
    }

    /// [`ColumnModel::forward`] on the batch of the last [`ColumnModel::prefetch_input`].
    fn forward_prefetched(&mut self, engines: &[E], train_seed: Option<u64>) -> Result<()> {
        for (m, &x) in self.columns.iter_mut().zip(&self.executor) {
            m.use_prefetched_input(&engines[x])?;
        }
        self.forward_rows(engines, train_seed)
    }

    /// Loss of the last forward against `labels`, then every column's parameter gradients,
    /// each row's handed to `on_ready` once every column has finished it; see
    /// [`Model::backward_with`].
    fn backward_with(
        &mut self,
        engines: &[E],
        labels: &[u32],
        train_seed: Option<u64>,
        on_ready: &mut OnReady<'_, E>,
    ) -> Result<f32> {
        let (n, classes) = (self.batch(), self.cfg.classes);
        check_labels(labels, n, classes)?;
        let loss = self.engine(engines, 0).softmax_xent(
            n,
            classes,
            &self.logits,
            labels,
            &mut self.probs,
            &mut self.dlogits,
        )?;
        for c in 0..self.columns.len() {
            let (out, idx) = self.logit_share(c);
            let b = Blocks {
                count: n,
                len: out.len(),
                src_offset: out.start,
                src_stride: classes,
                dst_offset: 0,
                dst_stride: out.len(),
            };
            Self::move_blocks(
                &mut self.traffic,
                &self.executor,
                engines,
                c,
                &mut self.columns[c].grads[idx],
                0,
                &self.dlogits,
                &b,
            )?;
        }
        let gathers = self.gather_rows();
        for r in (0..self.columns[0].steps.len()).rev() {
            self.par_columns(engines, |m, e| m.backward_row(e, r, train_seed))?;
            let per_column = self.columns[0].params.len();
            let ready: Vec<_> = (self.columns.iter().enumerate())
                .flat_map(|(c, m)| {
                    let e = &engines[self.executor[c]];
                    let indices = m.row_params(r, c * per_column);
                    indices.map(move |i| (i, e, &m.params[i - c * per_column]))
                })
                .collect();
            on_ready(&ready)?;
            if let Some(k) = gathers.iter().position(|&g| g == r) {
                self.gather_backward(engines, r, k)?;
            }
        }
        Ok(loss)
    }

    /// The update on every column. LARS's trust ratios are a whole layer's, so they are taken
    /// over all columns' slices together rather than column by column.
    fn sgd_step(&mut self, engines: &[E], lr: f32, sgd: &Sgd) -> Result<()> {
        match sgd.lars_eta {
            Some(eta) => crate::large_batch::lars_step(self.params_mut(engines), lr, sgd, eta),
            None => self.par_columns(engines, |m, e| m.sgd_step(e, lr, sgd)),
        }
    }

    /// Softmax probabilities [N, classes] of the last forward (test mode).
    fn probabilities(&mut self, engines: &[E]) -> Result<Vec<f32>> {
        let (n, classes) = (self.batch(), self.cfg.classes);
        let e0 = self.engine(engines, 0);
        e0.softmax(n, classes, &self.logits, &mut self.probs)?;
        let mut out = vec![0.0; n * classes];
        e0.download(&self.probs, &mut out)?;
        Ok(out)
    }

    /// Softmax probabilities of the last `backward` (training mode).
    fn train_probabilities(&self, engines: &[E]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.batch() * self.cfg.classes];
        self.engine(engines, 0).download(&self.probs, &mut out)?;
        Ok(out)
    }

    /// The first non-finite value, naming the column; see [`Model::find_non_finite`].
    fn find_non_finite(&self, engines: &[E]) -> Result<Option<String>> {
        for (c, m) in self.columns.iter().enumerate() {
            if let Some(what) = m.find_non_finite(self.engine(engines, c))? {
                return Ok(Some(format!("column {c}: {what}")));
            }
        }
        Ok(None)
    }

    /// (name, whole shape) of every parameter, in table order.
    fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut shapes: Vec<(String, Vec<usize>)> = self.columns[0]
            .params
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect();
        for m in &self.columns[1..] {
            for ((_, shape), p) in shapes.iter_mut().zip(&m.params) {
                shape[0] += p.shape[0];
            }
        }
        shapes
    }

    fn read_params(&self, engines: &[E]) -> Result<HostTensors> {
        self.read_whole(engines, |m, e| m.read_params(e))
    }

    /// Every column's parameters, each with the executor that holds it.
    fn params_mut<'a>(&'a mut self, engines: &'a [E]) -> Vec<(&'a E, &'a mut Param<E::Buf>)> {
        let executor = &self.executor;
        self.columns
            .iter_mut()
            .enumerate()
            .flat_map(|(c, m)| m.params.iter_mut().map(move |p| (&engines[executor[c]], p)))
            .collect()
    }

    /// See [`Model::set_first_image`].
    fn set_first_image(&mut self, first: usize) {
        self.columns
            .iter_mut()
            .for_each(|m| m.set_first_image(first));
    }

    fn read_grads(&self, engines: &[E]) -> Result<HostTensors> {
        self.read_whole(engines, |m, e| m.read_grads(e))
    }

    fn read_momentum(&self, engines: &[E]) -> Result<HostTensors> {
        self.read_whole(engines, |m, e| m.read_momentum(e))
    }

    /// Sets a whole tensor: each column takes its rows; see [`Model::write_param`].
    fn write_param(
        &mut self,
        engines: &[E],
        name: &str,
        shape: &[usize],
        values: &[f32],
        momentum: bool,
    ) -> Result<()> {
        let per_row = shape.iter().skip(1).product::<usize>();
        let mut first = 0;
        for c in 0..self.columns.len() {
            let own = self.columns[c]
                .params
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.shape.clone())
                .ok_or_else(|| Error::Config(format!("the model has no parameter {name}")))?;
            let rows = own[0];
            let end = (first + rows) * per_row;
            if shape.is_empty() || shape[1..] != own[1..] || end > values.len() {
                return Err(Error::shape(
                    name,
                    format!("stored shape {shape:?} does not match the model's columns"),
                ));
            }
            let e = &engines[self.executor[c]];
            self.columns[c].write_param(e, name, &own, &values[first * per_row..end], momentum)?;
            first += rows;
        }
        if first != shape[0] || first * per_row != values.len() {
            return Err(Error::shape(
                name,
                format!("stored shape {shape:?} does not match the model's columns"),
            ));
        }
        Ok(())
    }
}

/// What the trainer, evaluation and the benches ask of a network, whichever way it is placed:
/// each method gets every executor (`engines`), and a network on one uses `engines[0]`.
pub trait NetworkOps<E: Engine> {
    fn cfg(&self) -> &ArchConfig;

    /// Bytes that crossed between columns / executors in the last step (zero when whole).
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }

    /// (name, shape) of every parameter as checkpoints store it.
    fn param_shapes(&self) -> Vec<(String, Vec<usize>)>;

    fn set_batch(&mut self, engines: &[E], n: usize) -> Result<()>;

    /// logits = net(images); see [`Model::forward`].
    fn forward(&mut self, engines: &[E], images: &[f32], seed: Option<u64>) -> Result<()>;

    /// Uploads the next batch into the second input buffer; see [`Model::prefetch_input`].
    fn prefetch_input(&mut self, engines: &[E], images: &[f32]) -> Result<()>;

    /// [`NetworkOps::forward`] on the batch of the last [`NetworkOps::prefetch_input`].
    fn forward_prefetched(&mut self, engines: &[E], seed: Option<u64>) -> Result<()>;

    /// Loss of the last forward against `labels`, and every parameter's gradient.
    fn backward(&mut self, engines: &[E], labels: &[u32], seed: Option<u64>) -> Result<f32> {
        self.backward_with(engines, labels, seed, &mut |_| Ok(()))
    }

    /// [`NetworkOps::backward`], handing each row's parameters to `on_ready` as soon as their
    /// gradients are final (see [`Model::backward_with`]).
    fn backward_with(
        &mut self,
        engines: &[E],
        labels: &[u32],
        seed: Option<u64>,
        on_ready: &mut OnReady<'_, E>,
    ) -> Result<f32>;

    fn sgd_step(&mut self, engines: &[E], lr: f32, sgd: &Sgd) -> Result<()>;

    fn probabilities(&mut self, engines: &[E]) -> Result<Vec<f32>>;

    fn train_probabilities(&self, engines: &[E]) -> Result<Vec<f32>>;

    fn find_non_finite(&self, engines: &[E]) -> Result<Option<String>>;

    fn read_params(&self, engines: &[E]) -> Result<HostTensors>;

    /// Every parameter buffer (value, gradient, momentum), each with the executor that holds it:
    /// one per tensor on one executor, one per tensor and column when split.
    fn params_mut<'a>(&'a mut self, engines: &'a [E]) -> Vec<(&'a E, &'a mut Param<E::Buf>)>;

    /// Makes the batch images `first..` of a global batch: see [`Model::set_first_image`].
    fn set_first_image(&mut self, first: usize);

    fn read_grads(&self, engines: &[E]) -> Result<HostTensors>;

    fn read_momentum(&self, engines: &[E]) -> Result<HostTensors>;

    fn write_param(
        &mut self,
        engines: &[E],
        name: &str,
        shape: &[usize],
        values: &[f32],
        momentum: bool,
    ) -> Result<()>;
}

/// The whole net on `engines[0]`.
impl<E: Engine> NetworkOps<E> for Model<E> {
    fn cfg(&self) -> &ArchConfig {
        &self.cfg
    }

    fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect()
    }

    fn set_batch(&mut self, engines: &[E], n: usize) -> Result<()> {
        Model::set_batch(self, &engines[0], n)
    }

    fn forward(&mut self, engines: &[E], images: &[f32], seed: Option<u64>) -> Result<()> {
        Model::forward(self, &engines[0], images, seed)
    }

    fn prefetch_input(&mut self, engines: &[E], images: &[f32]) -> Result<()> {
        Model::prefetch_input(self, &engines[0], images)
    }

    fn forward_prefetched(&mut self, engines: &[E], seed: Option<u64>) -> Result<()> {
        Model::forward_prefetched(self, &engines[0], seed)
    }

    fn backward_with(
        &mut self,
        engines: &[E],
        labels: &[u32],
        seed: Option<u64>,
        on_ready: &mut OnReady<'_, E>,
    ) -> Result<f32> {
        Model::backward_with(self, &engines[0], labels, seed, on_ready)
    }

    fn sgd_step(&mut self, engines: &[E], lr: f32, sgd: &Sgd) -> Result<()> {
        Model::sgd_step(self, &engines[0], lr, sgd)
    }

    fn probabilities(&mut self, engines: &[E]) -> Result<Vec<f32>> {
        Model::probabilities(self, &engines[0])
    }

    fn train_probabilities(&self, engines: &[E]) -> Result<Vec<f32>> {
        Model::train_probabilities(self, &engines[0])
    }

    fn find_non_finite(&self, engines: &[E]) -> Result<Option<String>> {
        Model::find_non_finite(self, &engines[0])
    }

    fn read_params(&self, engines: &[E]) -> Result<HostTensors> {
        Model::read_params(self, &engines[0])
    }

    fn params_mut<'a>(&'a mut self, engines: &'a [E]) -> Vec<(&'a E, &'a mut Param<E::Buf>)> {
        self.params.iter_mut().map(|p| (&engines[0], p)).collect()
    }

    fn set_first_image(&mut self, first: usize) {
        Model::set_first_image(self, first)
    }

    fn read_grads(&self, engines: &[E]) -> Result<HostTensors> {
        Model::read_grads(self, &engines[0])
    }

    fn read_momentum(&self, engines: &[E]) -> Result<HostTensors> {
        Model::read_momentum(self, &engines[0])
    }

    fn write_param(
        &mut self,
        engines: &[E],
        name: &str,
        shape: &[usize],
        values: &[f32],
        momentum: bool,
    ) -> Result<()> {
        Model::write_param(self, &engines[0], name, shape, values, momentum)
    }
}

/// A network as the trainer and evaluation hold it: whole on one executor, or split into
/// columns over several. Its methods are [`NetworkOps`]'s, reached through `Deref`.
pub enum Network<E: Engine> {
    Whole(Model<E>),
    Columns(ColumnModel<E>),
}

impl<E: Engine> Network<E> {
    /// One model on `engines[0]` when `split` is false; else the columns placed over `engines`.
    pub fn new(
        engines: &[E],
        split: bool,
        cfg: ArchConfig,
        init: Init,
        seed: u64,
        batch: usize,
    ) -> Result<Self> {
        let Some(first) = engines.first() else {
            return Err(Error::Config("no executor to run the network on".into()));
        };
        if split {
            let executor = assign_columns(cfg.columns(), engines.len())?;
            Ok(Network::Columns(ColumnModel::new(
                engines, executor, cfg, init, seed, batch,
            )?))
        } else {
            Ok(Network::Whole(Model::new(first, cfg, init, seed, batch)?))
        }
    }
}

impl<E: Engine> std::ops::Deref for Network<E> {
    type Target = dyn NetworkOps<E>;

    fn deref(&self) -> &Self::Target {
        match self {
            Network::Whole(m) => m,
            Network::Columns(c) => c,
        }
    }
}

impl<E: Engine> std::ops::DerefMut for Network<E> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Network::Whole(m) => m,
            Network::Columns(c) => c,
        }
    }
}
