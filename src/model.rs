//! Runs the architecture table (`arch.rs`) on any [`Engine`]: parameters, activations, forward,
//! backward and the paper's SGD step. On one device the two columns are expressed as groups
//! (conv) and per-column windows (LRN), so this computes exactly the paper's two-GPU function;
//! for model parallelism (`parallel.rs`) a `Model` runs one column's share of every row.

use crate::arch::{ArchConfig, ColumnRow, Kind, ParamInit, PlannedLayer};
use crate::engine::{ConvShape, Engine, FcShape, LrnParams, LrnShape, MaskSlice, PoolShape};
use crate::error::{Error, Result};
use crate::rng::{hash, Rng};

/// Weight initialisation: each row's own (Section 5's for the paper's nets), Caffe's variant
/// of it, or He et al.'s variance scaling, for users whose loss stays flat.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Init {
    /// The table's: every weighted row's `init`. The paper's nets carry Section 5's, N(0, 0.01)
    /// weights, biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 elsewhere.
    Paper,
    /// Caffe's bvlc_alexnet applied to the rows: N(0, 0.005) for the hidden fully connected
    /// layers (fc6, fc7), the row's std elsewhere; the biases the row sets nonzero (the paper's
    /// 1s) are 0.1.
    Caffe,
    /// He et al. (2015), "Delving deep into rectifiers": weights N(0, 2 / fan_in), so that a
    /// ReLU layer passes its input's second moment on unchanged, and biases 0. The first
    /// weighted row reads the image instead of a ReLU's output: its std is further divided by
    /// the pixels' standard deviation `pixel_std` (the loader feeds mean-subtracted pixels on
    /// the 0..255 scale, about 60 for photos), so its outputs have the variance the formula
    /// assumes.
    Kaiming { pixel_std: f32 },
}

/// Where a weighted row sits, for the schemes that depend on it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowPlace {
    /// A fully connected row before the classifier.
    pub hidden_fc: bool,
    /// The first weighted row: it reads the image.
    pub reads_image: bool,
    /// Inputs each output unit sums over (conv: input channels per group x k x k).
    pub fan_in: usize,
}

impl Init {
    /// He et al.'s scheme for images whose pixels have the spread of `stats`: the standard
    /// deviation of a pixel value, from the trace of the RGB covariance (the sum of the three
    /// channels' variances).
    pub fn kaiming_for(stats: &crate::data::Stats) -> Init {
        let variance = stats.eigval.iter().map(|&v| v.max(0.0)).sum::<f32>() / 3.0;
        Init::Kaiming {
            // A constant image has no spread; 1 keeps the formula finite (and unscaled).
            pixel_std: if variance > 0.0 { variance.sqrt() } else { 1.0 },
        }
    }

    /// A weighted row's initialisation under this scheme, from the row's own and its place.
    pub fn apply(self, own: ParamInit, place: RowPlace) -> ParamInit {
        match self {
            Init::Paper => own,
            Init::Caffe => ParamInit {
                std: if place.hidden_fc { 0.005 } else { own.std },
                bias: if own.bias != 0.0 { 0.1 } else { 0.0 },
            },
            Init::Kaiming { pixel_std } => {
                let he = (2.0 / place.fan_in.max(1) as f64).sqrt();
                ParamInit {
                    std: if place.reads_image {
                        he / pixel_std as f64
                    } else {
                        he
                    },
                    bias: 0.0,
                }
            }
        }
    }
}

/// One row's timing from a profiled pass (see [`Model::set_profiling`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerTime {
    pub name: String,
    pub forward_s: f64,
    pub backward_s: f64,
    /// Multiply-adds per image of the forward and of the backward: a weighted row's backward
    /// does two products the size of its forward (data and weight gradients), one where its
    /// input is the image (no data gradient).
    pub forward_macs: u64,
    pub backward_macs: u64,
}

/// SGD hyper-parameters (Section 5).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    /// The paper's update rule names "weight w"; cuda-convnet and Caffe decay only weights.
    pub decay_biases: bool,
    /// LARS's trust coefficient eta, when each layer's rate is scaled by its trust ratio
    /// (beyond the paper: [`crate::large_batch::lars_step`]).
    pub lars_eta: Option<f32>,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd {
            momentum: 0.9,
            weight_decay: 0.0005,
            decay_biases: false,
            lars_eta: None,
        }
    }
}

/// Parameters whose gradients a backward pass has just finished: each with its index in
/// [`crate::parallel::Network::params_mut`]'s order and the executor that holds it.
pub type Ready<'a, E> = [(usize, &'a E, &'a Param<<E as Engine>::Buf>)];

/// What a backward pass calls with each row's [`Ready`] parameters.
pub type OnReady<'f, E> = dyn FnMut(&Ready<'_, E>) -> Result<()> + 'f;

/// Host copies of named tensors: (name, shape, values), in table order.
pub type HostTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// A learnable tensor with its gradient and momentum buffer, named as PyTorch names it.
pub struct Param<B> {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: B,
    pub grad: B,
    pub momentum: B,
    pub is_bias: bool,
}

impl<B> Param<B> {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a row of the plan does at batch size `n`, with its buffers resolved.
pub(crate) struct Step {
    pub(crate) row: ColumnRow,
    /// Index into `acts` of this row's input and output (equal for in-place rows). A gathering
    /// row's input is its own buffer, filled from every column by the caller.
    pub(crate) input: usize,
    pub(crate) output: usize,
    /// For Conv/Fc rows: index of the weight in `params` (the bias follows it).
    param: Option<usize>,
    /// For LRN rows: index into `lrn_scales`.
    scale: Option<usize>,
}

pub struct Model<E: Engine> {
    pub cfg: ArchConfig,
    pub params: Vec<Param<E::Buf>>,
    pub(crate) steps: Vec<Step>,
    /// Batch size the activation buffers are sized for.
    batch: usize,
    /// acts[0] is the input batch; activation gradients mirror it.
    pub(crate) acts: Vec<E::Buf>,
    pub(crate) grads: Vec<E::Buf>,
    /// Per-sample sizes of `acts` (so they can be re-sized for another batch).
    act_sizes: Vec<usize>,
    lrn_scales: Vec<E::Buf>,
    probs: E::Buf,
    /// The second input buffer of [`Model::prefetch_input`] (allocated on first use), and whether
    /// it holds a batch that no forward has used yet.
    next_input: Option<E::Buf>,
    next_input_ready: bool,
    /// Per-row (forward, backward) seconds of the last pass, when profiling is on.
    profile: Option<Vec<(f64, f64)>>,
    /// Where this model's batch starts in the global batch (data parallelism), so its dropout
    /// masks are those images' masks.
    first_image: usize,
    /// False for a model built by [`Model::for_inference`]: no gradient, momentum or
    /// activation-gradient buffers exist, and backward and the update are refused.
    trains: bool,
}

impl<E: Engine> Model<E> {
    /// Builds the network for batches of `batch` images and initialises its parameters.
    pub fn new(e: &E, cfg: ArchConfig, init: Init, seed: u64, batch: usize) -> Result<Self> {
        let rows = cfg.plan()?.into_iter().map(ColumnRow::whole).collect();
        let mut model = Self::build(e, cfg, rows, true, batch)?;
        model.initialise(e, init, seed)?;
        Ok(model)
    }

    /// The network for test-mode forwards only (eval, predict, features, `bench --inference`):
    /// parameters without gradient or momentum buffers and activations without gradients, which
    /// is less than half a training model's memory. Its weights are zero until loaded
    /// ([`Model::write_param`]).
    pub fn for_inference(e: &E, cfg: ArchConfig, batch: usize) -> Result<Self> {
        let rows = cfg.plan()?.into_iter().map(ColumnRow::whole).collect();
        Self::build(e, cfg, rows, false, batch)
    }

    /// Column `col`'s share of the network (its slice of every layer's kernels, initialised to
    /// exactly its slice of [`Model::new`]'s parameters), for model parallelism.
    pub(crate) fn column(
        e: &E,
        cfg: ArchConfig,
        col: usize,
        init: Init,
        seed: u64,
        batch: usize,
    ) -> Result<Self> {
        let rows = cfg.column_plan(col)?;
        let mut model = Self::build(e, cfg, rows, true, batch)?;
        model.initialise(e, init, seed)?;
        Ok(model)
    }

    /// Resolves `rows` into buffers for batches of `batch`; `trains`: with the buffers that
    /// backward and the update need.
    fn build(
        e: &E,
        cfg: ArchConfig,
        rows: Vec<ColumnRow>,
        trains: bool,
        batch: usize,
    ) -> Result<Self> {
        let training_len = |len: usize| if trains { len } else { 0 };
        let mut params = Vec::new();
        let mut steps = Vec::new();
        let mut act_sizes = vec![3 * cfg.input_size * cfg.input_size];
        let mut lrn_count = 0;
        for row in rows {
            let p = &row.plan;
            let input = if row.gather {
                act_sizes.push(p.input.len());
                act_sizes.len() - 1
            } else {
                act_sizes.len() - 1
            };
            let output = if p.layer.kind.is_in_place() {
                input
            } else {
                act_sizes.push(p.output.len());
                act_sizes.len() - 1
            };
            let param = match p.layer.kind {
                kind if kind.is_weighted() => {
                    let weight_shape = match (kind, p.conv) {
                        (Kind::Conv { .. }, Some(c)) => {
                            vec![c.c_out, c.c_in / c.groups, c.kh, c.kw]
                        }
                        _ => vec![p.output.c, p.input.len()],
                    };
                    let index = params.len();
                    for (suffix, shape, is_bias) in [
                        ("weight", weight_shape, false),
                        ("bias", vec![p.output.c], true),
                    ] {
                        let len = shape.iter().product();
                        params.push(Param {
                            name: format!("{}.{suffix}", p.layer.name),
                            shape,
                            value: e.alloc(len)?,
                            grad: e.alloc(training_len(len))?,
                            momentum: e.alloc(training_len(len))?,
                            is_bias,
                        });
                    }
                    Some(index)
                }
                _ => None,
            };
            let scale = if matches!(p.layer.kind, Kind::Lrn { .. }) {
                lrn_count += 1;
                Some(lrn_count - 1)
            } else {
                None
            };
            steps.push(Step {
                row,
                input,
                output,
                param,
                scale,
            });
        }
        let mut model = Model {
            cfg,
            params,
            steps,
            batch: 0,
            acts: Vec::new(),
            grads: Vec::new(),
            act_sizes,
            lrn_scales: Vec::new(),
            probs: e.alloc(0)?,
            next_input: None,
            next_input_ready: false,
            profile: None,
            first_image: 0,
            trains,
        };
        model.set_batch(e, batch)?;
        Ok(model)
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Makes this model's batch images `first..` of a global batch (a data-parallel replica's
    /// share): their dropout masks are drawn, not those of images `0..`.
    pub fn set_first_image(&mut self, first: usize) {
        self.first_image = first;
    }

    pub fn classes(&self) -> usize {
        self.cfg.classes
    }

    /// Re-sizes the activation buffers for batches of `n` (no-op if already so).
    pub fn set_batch(&mut self, e: &E, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        if n == self.batch {
            return Ok(());
        }
        // Free the old buffers first so the peak is one batch's worth, not two.
        self.acts.clear();
        self.grads.clear();
        self.lrn_scales.clear();
        for &size in &self.act_sizes {
            self.acts.push(e.alloc(n * size)?);
            if self.trains {
                self.grads.push(e.alloc(n * size)?);
            }
        }
        for s in &self.steps {
            if s.scale.is_some() {
                self.lrn_scales.push(e.alloc(n * s.row.plan.output.len())?);
            }
        }
        self.probs = e.alloc(n * self.cfg.classes)?;
        self.next_input = None;
        self.next_input_ready = false;
        self.batch = n;
        Ok(())
    }

    /// Every weighted row's initialisation under `init` (the row's own, or Caffe's variant), from
    /// `seed`; each weight has its own stream. A column draws exactly its rows of the whole
    /// layer's tensor (the stream is skipped ahead to its first row), so one- and two-executor
    /// runs start from the same weights.
    pub fn initialise(&mut self, e: &E, init: Init, seed: u64) -> Result<()> {
        let root = Rng::new(seed);
        // The classifier is the last weighted row; fully connected rows before it are hidden.
        let classifier = self.steps.iter().rposition(|s| s.param.is_some());
        let first = self.steps.iter().position(|s| s.param.is_some());
        for (row, s) in self.steps.iter().enumerate() {
            let kind = s.row.plan.layer.kind;
            let (Some(w), Some(own)) = (s.param, kind.init()) else {
                continue;
            };
            let place = RowPlace {
                hidden_fc: matches!(kind, Kind::Fc { .. }) && Some(row) != classifier,
                reads_image: Some(row) == first,
                fan_in: fan_in(&s.row.plan),
            };
            let ParamInit { std, bias } = init.apply(own, place);
            let weight = &mut self.params[w];
            let mut rng = root.fork(w as u64);
            rng.skip_normals((s.row.out.start * weight.len() / weight.shape[0]) as u64);
            let values: Vec<f32> = (0..weight.len())
                .map(|_| (rng.normal() * std) as f32)
                .collect();
            e.upload(&mut weight.value, &values)?;
            e.fill(&mut weight.momentum, 0.0)?;
            let b = &mut self.params[w + 1];
            e.fill(&mut b.value, bias)?;
            e.fill(&mut b.momentum, 0.0)?;
        }
        Ok(())
    }

    fn conv_shape(&self, s: &Step) -> ConvShape {
        let mut c = s.row.plan.conv.expect("conv rows carry their geometry");
        c.n = self.batch;
        c
    }

    /// An LRN row's geometry and constants.
    fn lrn_shape(&self, s: &Step) -> (LrnShape, LrnParams) {
        let Kind::Lrn {
            params,
            across_columns,
        } = s.row.plan.layer.kind
        else {
            unreachable!("lrn_shape on a non-LRN row")
        };
        let shape = LrnShape {
            n: self.batch,
            c: s.row.plan.input.c,
            h: s.row.plan.input.h,
            w: s.row.plan.input.w,
            // The window stops at each column's edges unless the row says otherwise.
            groups: if across_columns {
                1
            } else {
                s.row.plan.layer.columns
            },
        };
        (shape, params)
    }

    fn pool_shape(&self, s: &Step) -> PoolShape {
        let (Kind::MaxPool { size, stride } | Kind::AvgPool { size, stride }) =
            s.row.plan.layer.kind
        else {
            unreachable!("pool_shape on a non-pool row")
        };
        PoolShape {
            n: self.batch,
            c: s.row.plan.input.c,
            h: s.row.plan.input.h,
            w: s.row.plan.input.w,
            size,
            stride,
        }
    }

    fn fc_shape(&self, s: &Step) -> FcShape {
        FcShape {
            n: self.batch,
            d_in: s.row.plan.input.len(),
            d_out: s.row.plan.output.len(),
        }
    }

    /// The part of row `row`'s dropout mask this model holds, at training step `step_seed`.
    fn mask(&self, step_seed: u64, row: usize) -> MaskSlice {
        let r = &self.steps[row].row;
        MaskSlice {
            seed: Self::dropout_seed(step_seed, row),
            width: r.out.len(),
            total: r.out_total,
            offset: r.out.start,
            first_image: self.first_image,
        }
    }

    /// The dropout seed of table row `row` at training step `step_seed` (identical on every
    /// engine, and what the whole-model test reproduces).
    pub fn dropout_seed(step_seed: u64, row: usize) -> u64 {
        hash(step_seed, row as u64)
    }

    fn dropout_keep_scale(&self) -> f32 {
        if self.cfg.dropout_paper_scaling {
            1.0
        } else {
            1.0 / (1.0 - self.cfg.dropout)
        }
    }

    /// logits[N,classes] = net(images[N,3,S,S]). `train_seed`: Some(seed) = training mode with
    /// dropout masks drawn from that seed; None = test mode.
    pub fn forward(&mut self, e: &E, images: &[f32], train_seed: Option<u64>) -> Result<()> {
        self.upload_input(e, images)?;
        self.forward_rows(e, train_seed)
    }

    /// Uploads the batch the next [`Model::forward_prefetched`] will use into a second input
    /// buffer, leaving the current one (which the backward still reads) alone. Called between
    /// `forward` and `backward`, the upload overlaps the work the engine has queued: on the GPU
    /// the host's copy into page-locked staging runs while the forward's kernels do, and with the
    /// CUDA engine's copy stream the DMA runs while the backward's do.
    pub fn prefetch_input(&mut self, e: &E, images: &[f32]) -> Result<()> {
        self.check_input(images)?;
        let next = match &mut self.next_input {
            Some(buf) => buf,
            None => self
                .next_input
                .insert(e.alloc(self.batch * self.act_sizes[0])?),
        };
        e.prefetch_upload(next, images)?;
        self.next_input_ready = true;
        Ok(())
    }

    /// [`Model::forward`] on the batch of the last [`Model::prefetch_input`].
    pub fn forward_prefetched(&mut self, e: &E, train_seed: Option<u64>) -> Result<()> {
        self.use_prefetched_input(e)?;
        self.forward_rows(e, train_seed)
    }

    /// Makes the prefetched batch the input (the old input buffer becomes the next prefetch's),
    /// once the ops queued on `e` from here on see its upload.
    pub(crate) fn use_prefetched_input(&mut self, e: &E) -> Result<()> {
        match &mut self.next_input {
            Some(next) if self.next_input_ready => {
                e.prefetch_join()?;
                std::mem::swap(&mut self.acts[0], next);
                self.next_input_ready = false;
                Ok(())
            }
            _ => Err(Error::Config(
                "forward_prefetched called with no batch prefetched since the last one \
                 (call prefetch_input first)"
                    .into(),
            )),
        }
    }

    /// Test-mode forward through rows `0..=last` only, and a host copy of row `last`'s output
    /// [N, len] (e.g. fc7 after its ReLU, before the dropout row that shares its buffer).
    pub fn forward_through(&mut self, e: &E, images: &[f32], last: usize) -> Result<Vec<f32>> {
        if last >= self.steps.len() {
            return Err(Error::Config(format!(
                "row {last} of a {}-row net",
                self.steps.len()
            )));
        }
        self.upload_input(e, images)?;
        for row in 0..=last {
            self.forward_row(e, row, None)?;
        }
        let buf = &self.acts[self.steps[last].output];
        let mut out = vec![0.0; e.buf_len(buf)];
        e.download(buf, &mut out)?;
        Ok(out)
    }

    fn forward_rows(&mut self, e: &E, train_seed: Option<u64>) -> Result<()> {
        for row in 0..self.steps.len() {
            self.forward_row(e, row, train_seed)?;
        }
        Ok(())
    }

    /// Checks a batch of images against the input shape.
    fn check_input(&self, images: &[f32]) -> Result<()> {
        let want = self.batch * self.act_sizes[0];
        if images.len() != want {
            return Err(Error::shape(
                "model input",
                format!(
                    "got {} floats, batch {} x 3x{}x{} needs {want}",
                    images.len(),
                    self.batch,
                    self.cfg.input_size,
                    self.cfg.input_size
                ),
            ));
        }
        Ok(())
    }

    /// Checks the batch of images against the input shape and uploads it.
    pub(crate) fn upload_input(&mut self, e: &E, images: &[f32]) -> Result<()> {
        self.check_input(images)?;
        e.upload(&mut self.acts[0], images)
    }

    /// Runs row `row` forward (its input already in place).
    pub(crate) fn forward_row(&mut self, e: &E, row: usize, train_seed: Option<u64>) -> Result<()> {
        let keep_scale = self.dropout_keep_scale();
        let started = self.profile.is_some().then(std::time::Instant::now);
        let s = &self.steps[row];
        let (input, output) = (s.input, s.output);
        match s.row.plan.layer.kind {
            Kind::Conv { .. } => {
                let shape = self.conv_shape(s);
                let w = s.param.expect("conv rows own parameters");
                let (x, y) = two(&mut self.acts, input, output);
                e.conv_forward(
                    &shape,
                    x,
                    &self.params[w].value,
                    &self.params[w + 1].value,
                    y,
                )?;
            }
            Kind::Fc { .. } => {
                let shape = self.fc_shape(s);
                let w = s.param.expect("fc rows own parameters");
                let (x, y) = two(&mut self.acts, input, output);
                e.fc_forward(
                    &shape,
                    x,
                    &self.params[w].value,
                    &self.params[w + 1].value,
                    y,
                )?;
            }
            Kind::Relu => e.relu_forward(&mut self.acts[output])?,
            Kind::Tanh => e.tanh_forward(&mut self.acts[output])?,
            Kind::Lrn { .. } => {
                let (shape, lrn) = self.lrn_shape(s);
                let scale = &mut self.lrn_scales[s.scale.expect("lrn rows own a scale")];
                let (x, y) = two(&mut self.acts, input, output);
                e.lrn_forward(&shape, &lrn, x, y, scale)?;
            }
            Kind::MaxPool { .. } => {
                let shape = self.pool_shape(s);
                let (x, y) = two(&mut self.acts, input, output);
                e.maxpool_forward(&shape, x, y)?;
            }
            Kind::AvgPool { .. } => {
                let shape = self.pool_shape(s);
                let (x, y) = two(&mut self.acts, input, output);
                e.avgpool_forward(&shape, x, y)?;
            }
            // The plan admits it only where it is the identity.
            Kind::AdaptiveAvgPool { .. } => {}
            Kind::Dropout => match train_seed {
                Some(seed) if self.cfg.dropout > 0.0 => {
                    let mask = self.mask(seed, row);
                    e.dropout_forward(&mut self.acts[output], self.cfg.dropout, keep_scale, &mask)?
                }
                None if self.cfg.dropout_paper_scaling && self.cfg.dropout > 0.0 => {
                    // Section 4.2: "at test time, we use all the neurons but multiply
                    // their outputs by 0.5".
                    e.scale(&mut self.acts[output], 1.0 - self.cfg.dropout)?
                }
                _ => {}
            },
        }
        if let Some(t0) = started {
            e.synchronize()?;
            if let Some(p) = self.profile.as_mut() {
                p[row].0 = t0.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }

    /// Turns per-layer timing on or off. On, every row synchronises the engine after it runs,
    /// so use it for benchmarks only.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| vec![(0.0, 0.0); self.steps.len()]);
    }

    /// Every row's times and work in the last profiled pass.
    pub fn layer_times(&self) -> Vec<LayerTime> {
        let Some(p) = &self.profile else {
            return Vec::new();
        };
        self.steps
            .iter()
            .zip(p)
            .map(|(s, &(forward_s, backward_s))| {
                let macs = s.row.plan.macs;
                LayerTime {
                    name: s.row.plan.layer.name.clone(),
                    forward_s,
                    backward_s,
                    forward_macs: macs,
                    backward_macs: if s.input == 0 { macs } else { 2 * macs },
                }
            })
            .collect()
    }

    /// Softmax cross-entropy of the last forward against `labels`, then gradients of every
    /// parameter (averaged over the batch). `train_seed` must be the forward's.
    pub fn backward(&mut self, e: &E, labels: &[u32], train_seed: Option<u64>) -> Result<f32> {
        self.backward_with(e, labels, train_seed, &mut |_| Ok(()))
    }

    /// [`Model::backward`], handing each row's parameters to `on_ready` as soon as their
    /// gradients are final (last row first), while the rows before it are still to run: a
    /// data-parallel run starts summing them there.
    pub fn backward_with(
        &mut self,
        e: &E,
        labels: &[u32],
        train_seed: Option<u64>,
        on_ready: &mut OnReady<'_, E>,
    ) -> Result<f32> {
        self.check_trains("backward")?;
        check_labels(labels, self.batch, self.cfg.classes)?;
        let last = self.acts.len() - 1;
        let loss = e.softmax_xent(
            self.batch,
            self.cfg.classes,
            &self.acts[last],
            labels,
            &mut self.probs,
            &mut self.grads[last],
        )?;
        for row in (0..self.steps.len()).rev() {
            self.backward_row(e, row, train_seed)?;
            let ready = self.row_params(row, 0).map(|i| (i, e, &self.params[i]));
            on_ready(&ready.collect::<Vec<_>>())?;
        }
        Ok(loss)
    }

    /// The indices of row `row`'s parameters (its weight and bias; none for rows without),
    /// offset by `base`.
    pub(crate) fn row_params(&self, row: usize, base: usize) -> std::ops::Range<usize> {
        match self.steps[row].param {
            Some(w) => base + w..base + w + 2,
            None => base..base,
        }
    }

    /// Runs row `row` backward (the gradient of its output already in place).
    pub(crate) fn backward_row(
        &mut self,
        e: &E,
        row: usize,
        train_seed: Option<u64>,
    ) -> Result<()> {
        let keep_scale = self.dropout_keep_scale();
        let started = self.profile.is_some().then(std::time::Instant::now);
        let s = &self.steps[row];
        let (input, output) = (s.input, s.output);
        // The first layer's input is the image: its gradient is never needed.
        let needs_dx = input != 0;
        match s.row.plan.layer.kind {
            Kind::Conv { .. } => {
                let shape = self.conv_shape(s);
                let w = s.param.expect("conv rows own parameters");
                let (wp, bp) = two(&mut self.params, w, w + 1);
                e.conv_backward_weights(
                    &shape,
                    &self.acts[input],
                    &self.grads[output],
                    &mut wp.grad,
                    &mut bp.grad,
                )?;
                if needs_dx {
                    let (dx, dy) = two(&mut self.grads, input, output);
                    e.conv_backward_data(&shape, dy, &wp.value, dx)?;
                }
            }
            Kind::Fc { .. } => {
                let shape = self.fc_shape(s);
                let w = s.param.expect("fc rows own parameters");
                let (wp, bp) = two(&mut self.params, w, w + 1);
                let (dx, dy) = two(&mut self.grads, input, output);
                e.fc_backward(
                    &shape,
                    &self.acts[input],
                    &wp.value,
                    dy,
                    needs_dx.then_some(dx),
                    &mut wp.grad,
                    &mut bp.grad,
                )?;
            }
            Kind::Relu => e.relu_backward(&self.acts[output], &mut self.grads[output])?,
            Kind::Tanh => e.tanh_backward(&self.acts[output], &mut self.grads[output])?,
            Kind::Lrn { .. } => {
                let (shape, lrn) = self.lrn_shape(s);
                let scale = &self.lrn_scales[s.scale.expect("lrn rows own a scale")];
                let (dx, dy) = two(&mut self.grads, input, output);
                e.lrn_backward(
                    &shape,
                    &lrn,
                    &self.acts[input],
                    &self.acts[output],
                    scale,
                    dy,
                    dx,
                )?;
            }
            Kind::MaxPool { .. } => {
                let shape = self.pool_shape(s);
                let (dx, dy) = two(&mut self.grads, input, output);
                e.maxpool_backward(&shape, &self.acts[input], &self.acts[output], dy, dx)?;
            }
            Kind::AvgPool { .. } => {
                let shape = self.pool_shape(s);
                let (dx, dy) = two(&mut self.grads, input, output);
                e.avgpool_backward(&shape, dy, dx)?;
            }
            Kind::AdaptiveAvgPool { .. } => {}
            Kind::Dropout => {
                if let Some(seed) = train_seed.filter(|_| self.cfg.dropout > 0.0) {
                    let mask = self.mask(seed, row);
                    e.dropout_backward(
                        &mut self.grads[output],
                        self.cfg.dropout,
                        keep_scale,
                        &mask,
                    )?;
                }
            }
        }
        if let Some(t0) = started {
            e.synchronize()?;
            if let Some(p) = self.profile.as_mut() {
                p[row].1 = t0.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }

    /// The paper's update for every parameter: v = 0.9 v - 0.0005 lr w - lr dL/dw; w += v
    /// (with `sgd.lars_eta`, at each layer's LARS rate).
    pub fn sgd_step(&mut self, e: &E, lr: f32, sgd: &Sgd) -> Result<()> {
        self.check_trains("the SGD update")?;
        if let Some(eta) = sgd.lars_eta {
            let params = self.params.iter_mut().map(|p| (e, p)).collect();
            return crate::large_batch::lars_step(params, lr, sgd, eta);
        }
        for p in &mut self.params {
            let decay = if p.is_bias && !sgd.decay_biases {
                0.0
            } else {
                sgd.weight_decay
            };
            e.sgd_update(
                &mut p.value,
                &p.grad,
                &mut p.momentum,
                lr,
                sgd.momentum,
                decay,
            )?;
        }
        Ok(())
    }

    /// Softmax probabilities [N, classes] of the last forward (test mode).
    pub fn probabilities(&mut self, e: &E) -> Result<Vec<f32>> {
        let last = self.acts.len() - 1;
        e.softmax(
            self.batch,
            self.cfg.classes,
            &self.acts[last],
            &mut self.probs,
        )?;
        let mut out = vec![0.0; self.batch * self.cfg.classes];
        e.download(&self.probs, &mut out)?;
        Ok(out)
    }

    /// Softmax probabilities of the last `backward` (training mode), for train top-k.
    pub fn train_probabilities(&self, e: &E) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.batch * self.cfg.classes];
        e.download(&self.probs, &mut out)?;
        Ok(out)
    }

    /// Host copy of a named activation (a row's output), e.g. "fc7" for feature-space
    /// neighbours, "conv1" for inspection. Valid after `forward`.
    pub fn activation(&self, e: &E, layer: &str) -> Result<Vec<f32>> {
        self.download_row_output(e, &self.acts, layer)
    }

    /// Host copy of the gradient of the loss with respect to a named row's output, after
    /// `backward` (for locating where two engines part ways).
    pub fn output_grad(&self, e: &E, layer: &str) -> Result<Vec<f32>> {
        self.check_trains("output_grad")?;
        self.download_row_output(e, &self.grads, layer)
    }

    fn download_row_output(&self, e: &E, bufs: &[E::Buf], layer: &str) -> Result<Vec<f32>> {
        // In-place rows share their input's buffer: the last row of that name owns the value.
        let s = self
            .steps
            .iter()
            .rev()
            .find(|s| s.row.plan.layer.name == layer)
            .ok_or_else(|| Error::Config(format!("no layer named {layer}")))?;
        let buf = &bufs[s.output];
        let mut out = vec![0.0; e.buf_len(buf)];
        e.download(buf, &mut out)?;
        Ok(out)
    }

    /// Names the first row (in forward order) whose activation, or (in backward order) whose
    /// activation gradient or parameter gradient, holds a NaN or infinity. For the divergence
    /// report; downloads everything, so only called once something went wrong.
    pub fn find_non_finite(&self, e: &E) -> Result<Option<String>> {
        let finite = |buf: &E::Buf| -> Result<bool> {
            let mut host = vec![0.0; e.buf_len(buf)];
            e.download(buf, &mut host)?;
            Ok(host.iter().all(|v| v.is_finite()))
        };
        for p in &self.params {
            if !finite(&p.value)? {
                return Ok(Some(format!("parameter {} (before this step)", p.name)));
            }
        }
        for s in &self.steps {
            if !finite(&self.acts[s.output])? {
                return Ok(Some(format!("activations of {}", s.row.plan.layer.name)));
            }
        }
        if !self.trains {
            return Ok(None);
        }
        for s in self.steps.iter().rev() {
            if !finite(&self.grads[s.output])? {
                return Ok(Some(format!(
                    "gradient of {}'s output",
                    s.row.plan.layer.name
                )));
            }
            if let Some(w) = s.param {
                for p in &self.params[w..w + 2] {
                    if !finite(&p.grad)? {
                        return Ok(Some(format!("gradient of {}", p.name)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Host copies of every parameter, as (name, shape, values), in table order.
    pub fn read_params(&self, e: &E) -> Result<HostTensors> {
        self.read(e, |p| &p.value)
    }

    /// Host copies of every parameter gradient (of the last backward).
    pub fn read_grads(&self, e: &E) -> Result<HostTensors> {
        self.check_trains("read_grads")?;
        self.read(e, |p| &p.grad)
    }

    /// Host copies of every momentum buffer.
    pub fn read_momentum(&self, e: &E) -> Result<HostTensors> {
        self.check_trains("read_momentum")?;
        self.read(e, |p| &p.momentum)
    }

    fn read(&self, e: &E, which: impl Fn(&Param<E::Buf>) -> &E::Buf) -> Result<HostTensors> {
        self.params
            .iter()
            .map(|p| {
                let mut host = vec![0.0; p.len()];
                e.download(which(p), &mut host)?;
                Ok((p.name.clone(), p.shape.clone(), host))
            })
            .collect()
    }

    /// Sets parameter `name` (and, with `momentum`, its momentum buffer) from host values,
    /// checking the shape.
    pub fn write_param(
        &mut self,
        e: &E,
        name: &str,
        shape: &[usize],
        values: &[f32],
        momentum: bool,
    ) -> Result<()> {
        if momentum && !self.trains {
            return Err(Error::Config(format!(
                "{name}: an inference model holds no momentum to set"
            )));
        }
        let p = self
            .params
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::Config(format!("the model has no parameter {name}")))?;
        if p.shape != shape || values.len() != p.len() {
            return Err(Error::shape(
                name,
                format!(
                    "stored shape {shape:?} ({} values) does not match the model's {:?}",
                    values.len(),
                    p.shape
                ),
            ));
        }
        let dst = if momentum {
            &mut p.momentum
        } else {
            &mut p.value
        };
        e.upload(dst, values)
    }
}

impl<E: Engine> Model<E> {
    /// Refuses `what` on a model built for inference.
    fn check_trains(&self, what: &str) -> Result<()> {
        if self.trains {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "{what} on a model built for inference (Model::for_inference has no gradient \
                 buffers; build it with Model::new to train)"
            )))
        }
    }
}

/// Inputs each output unit of a weighted row sums over: a conv kernel's (input channels per
/// group x k x k), a fully connected unit's whole input.
pub fn fan_in(plan: &PlannedLayer) -> usize {
    match plan.conv {
        Some(c) => c.c_in / c.groups.max(1) * c.kh * c.kw,
        None => plan.input.len(),
    }
}

/// Labels must be one per image and within the class count.
pub(crate) fn check_labels(labels: &[u32], batch: usize, classes: usize) -> Result<()> {
    if labels.len() != batch {
        return Err(Error::shape(
            "model labels",
            format!("{} labels for a batch of {batch}", labels.len()),
        ));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(Error::Config(format!(
            "label {bad} is out of range for a {classes}-class model"
        )));
    }
    Ok(())
}

/// Mutable references to two distinct elements of a slice (input and output buffers of a row).
pub(crate) fn two<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b, "two(): the same element twice");
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}
