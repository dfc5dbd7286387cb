//! The architecture as data (Section 3.5, Figure 2): one row per layer, as cuda-convnet describes
//! its nets in a layer file. A row says everything about its layer: what it computes with its own
//! settings (kernel, window, LRN constants, initialisation), how many columns (the paper's GPUs)
//! it is split into and which columns of its input it reads. The built-in nets (`paper`,
//! `one-column`, `cifar10`) are such tables, and so is a net file read by [`crate::netfile`]. The
//! model executes the table; `alexnet-cli summary` prints it.

use crate::engine::{ConvShape, LrnParams};
use crate::error::{Error, Result};

/// How a weighted row's parameters start: weights drawn from N(0, std^2), biases all `bias`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParamInit {
    /// f64 because the weights are drawn in f64 and then rounded: an f32 std would change them.
    pub std: f64,
    pub bias: f32,
}

impl ParamInit {
    /// Section 5: "from a zero-mean Gaussian distribution with standard deviation 0.01".
    pub const fn paper(bias: f32) -> ParamInit {
        ParamInit { std: 0.01, bias }
    }
}

/// What a row computes, with the settings that belong to it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// `out` kernels of `k x k`, stride, zero padding. Groups come from the column wiring.
    Conv {
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        init: ParamInit,
    },
    Relu,
    Tanh,
    /// Cross-channel LRN. Within each column (the paper: each GPU normalises its own maps), or,
    /// with `across_columns`, over all the row's maps (Caffe's one-device AlexNet).
    Lrn {
        params: LrnParams,
        across_columns: bool,
    },
    MaxPool {
        size: usize,
        stride: usize,
    },
    AvgPool {
        size: usize,
        stride: usize,
    },
    /// PyTorch's `AdaptiveAvgPool2d(out)` (torchvision's AlexNet, before its classifier): average
    /// over windows that tile the input into `out x out` cells. Offered where it is the identity
    /// (the input already `out x out`: torchvision's net at 224 px, whose pool5 gives 6x6); other
    /// inputs are refused when the table is planned.
    AdaptiveAvgPool {
        out: usize,
    },
    /// Fully connected to `out` units (the input is flattened in C,H,W order).
    Fc {
        out: usize,
        init: ParamInit,
    },
    /// Dropout with drop probability from the config.
    Dropout,
}

impl Kind {
    /// Whether the row owns a weight and a bias.
    pub fn is_weighted(&self) -> bool {
        matches!(self, Kind::Conv { .. } | Kind::Fc { .. })
    }

    /// Whether the row overwrites its input instead of writing a new buffer.
    pub fn is_in_place(&self) -> bool {
        matches!(
            self,
            Kind::Relu | Kind::Tanh | Kind::Dropout | Kind::AdaptiveAvgPool { .. }
        )
    }

    /// The weighted rows' initialisation.
    pub fn init(&self) -> Option<ParamInit> {
        match *self {
            Kind::Conv { init, .. } | Kind::Fc { init, .. } => Some(init),
            _ => None,
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    pub name: String,
    pub kind: Kind,
    /// How many columns (the paper's GPUs) this layer's output is split into.
    pub columns: usize,
    /// Whether each column of this layer reads all columns of its input (the paper's cross-GPU
    /// connections: conv3, fc6, fc7, fc8) or only its own. Only meaningful for Conv and Fc.
    pub reads_all_columns: bool,
}

/// The layers whose columns read every column of their input in the paper (Figure 2): the only
/// places where its two GPUs exchange activations.
pub const PAPER_CROSS_COLUMN: [&str; 4] = ["conv3", "fc6", "fc7", "fc8"];

fn paper_cross_column() -> Vec<String> {
    PAPER_CROSS_COLUMN.map(String::from).to_vec()
}

/// The activation shape after a layer: channels x height x width (FC: `c` units, h = w = 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A layer table read from a net file (`--net`), kept whole so that a checkpoint carries it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Table {
    /// What the file calls the net (else the file's name), for messages and the summary.
    pub name: String,
    /// The input side the file was written for, if it says; `summary` uses it by default.
    pub input_size: Option<usize>,
    pub layers: Vec<Layer>,
}

/// Which layer table: a built-in one or a net file's.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Net {
    /// The paper's two-column net (Figure 2).
    Paper,
    /// The paper's one-column comparison net (footnote 2): half the kernels in conv1..conv4,
    /// full conv5 and FC layers.
    OneColumn,
    /// cuda-convnet's CIFAR-10 net (layers-18pct, without its response normalisation): three
    /// 5x5 convolutions with max and average pooling and one classifier layer, for 32x32 inputs.
    Cifar10,
    /// torchvision's `alexnet` (Krizhevsky's "one weird trick" variant, 2014): one column of
    /// 64/192/384/256/256 kernels, conv1 11x11 stride 4 pad 2, no LRN, adaptive average pooling
    /// to 6x6, dropout before fc6 and fc7; 224 px input.
    Torchvision,
    /// Caffe's `bvlc_alexnet`: the paper's two-column net with Caffe's LRN (over all 96/256 maps
    /// of the row, k = 1, alpha / n) and Caffe's initialisation; 227 px input.
    Caffe,
    /// A net file's table.
    Table(Table),
}

impl Net {
    /// A short name for messages: "paper", "one-column", "cifar10" or the net file's name.
    pub fn label(&self) -> &str {
        match self {
            Net::Paper => "paper",
            Net::OneColumn => "one-column",
            Net::Cifar10 => "cifar10",
            Net::Torchvision => "torchvision",
            Net::Caffe => "caffe",
            Net::Table(t) => &t.name,
        }
    }

    /// The input side the net is meant for: 227 for the paper's nets, 32 for CIFAR-10's, a net
    /// file's own (else 227).
    pub fn default_input_size(&self) -> usize {
        match self {
            Net::Cifar10 => 32,
            Net::Torchvision => 224,
            Net::Table(t) => t.input_size.unwrap_or(227),
            Net::Paper | Net::OneColumn | Net::Caffe => 227,
        }
    }

    /// The class count the net is meant for: ImageNet's 1000, CIFAR-10's 10, or the width of a
    /// net file's last row.
    pub fn default_classes(&self) -> usize {
        match self {
            Net::Cifar10 => 10,
            Net::Table(t) => match t.layers.last().map(|l| l.kind) {
                Some(Kind::Fc { out, .. }) => out,
                _ => 1000,
            },
            Net::Paper | Net::OneColumn | Net::Torchvision | Net::Caffe => 1000,
        }
    }
}

/// Everything that determines the network's function.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArchConfig {
    /// The layer table. (Checkpoints of format 1 called this `preset`.)
    #[serde(alias = "preset")]
    pub net: Net,
    /// Width of the last row, the classifier: the built-in nets are built for it; a net file's
    /// last row must have this many outputs.
    pub classes: usize,
    /// Input height = width. 227 makes conv1's 55x55 exact (the paper's "224" does not).
    pub input_size: usize,
    /// The LRN rows' constants in the built-in nets (a net file's LRN rows carry their own).
    pub lrn: LrnParams,
    /// Drop probability of every dropout row (the paper's: fc6 and fc7).
    pub dropout: f32,
    /// true: keep at train time unscaled, multiply by (1-p) at test time (the paper, Section
    /// 4.2). false: "inverted" dropout, scale by 1/(1-p) at train time (PyTorch, Caffe).
    pub dropout_paper_scaling: bool,
    /// In the built-in two-column net: which of conv2..conv5, fc6..fc8 read all columns of their
    /// input (the rest read only their own column; conv1 reads the image). The paper: "choosing
    /// the pattern of connectivity is a problem for cross-validation". Fully connected layers
    /// always read all columns. A net file's rows say it themselves.
    #[serde(default = "paper_cross_column")]
    pub cross_column: Vec<String>,
}

impl Default for ArchConfig {
    fn default() -> Self {
        ArchConfig {
            net: Net::Paper,
            classes: 1000,
            input_size: 227,
            lrn: LrnParams::PAPER,
            dropout: 0.5,
            dropout_paper_scaling: true,
            cross_column: paper_cross_column(),
        }
    }
}

impl ArchConfig {
    /// `net` with everything else the paper's, and the net's own class count and input size
    /// unless given.
    pub fn for_net(net: Net, classes: Option<usize>, input_size: Option<usize>) -> ArchConfig {
        ArchConfig {
            classes: classes.unwrap_or_else(|| net.default_classes()),
            input_size: input_size.unwrap_or_else(|| net.default_input_size()),
            net,
            ..ArchConfig::default()
        }
    }

    /// How many columns (the paper's GPUs) every layer is split into.
    pub fn columns(&self) -> usize {
        self.layers().first().map_or(1, |l| l.columns)
    }

    /// The layer table for this config.
    pub fn layers(&self) -> Vec<Layer> {
        match &self.net {
            Net::Paper => self.alexnet([96, 256, 384, 384], 2),
            Net::OneColumn => self.alexnet([48, 128, 192, 192], 1),
            Net::Cifar10 => self.cifar10(),
            Net::Torchvision => torchvision_rows(TORCHVISION_WIDTHS, self.classes),
            Net::Caffe => caffe_rows(CAFFE_WIDTHS, self.classes),
            Net::Table(t) => t.layers.clone(),
        }
    }

    /// The paper's net with `widths` kernels in conv1..conv4 over `cols` columns: Section 3.5's
    /// table, Section 5's initialisation (biases 1 in conv2, conv4, conv5 and the hidden fully
    /// connected layers, "to accelerate the early stages of learning"; 0 elsewhere).
    fn alexnet(&self, widths: [usize; 4], cols: usize) -> Vec<Layer> {
        let [c1, c2, c3, c4] = widths;
        let row = |name: &str, kind: Kind| Layer {
            name: name.to_string(),
            kind,
            columns: cols,
            reads_all_columns: self.cross_column.iter().any(|c| c == name),
        };
        let conv = |out, k, stride, pad, bias| Kind::Conv {
            out,
            k,
            stride,
            pad,
            init: ParamInit::paper(bias),
        };
        let fc = |out, bias| Kind::Fc {
            out,
            init: ParamInit::paper(bias),
        };
        let lrn = Kind::Lrn {
            params: self.lrn,
            across_columns: false,
        };
        let pool = Kind::MaxPool { size: 3, stride: 2 };
        let mut rows = vec![
            row("conv1", conv(c1, 11, 4, 0, 0.0)),
            row("relu1", Kind::Relu),
            row("lrn1", lrn),
            row("pool1", pool),
            row("conv2", conv(c2, 5, 1, 2, 1.0)),
            row("relu2", Kind::Relu),
            row("lrn2", lrn),
            row("pool2", pool),
            row("conv3", conv(c3, 3, 1, 1, 0.0)),
            row("relu3", Kind::Relu),
            row("conv4", conv(c4, 3, 1, 1, 1.0)),
            row("relu4", Kind::Relu),
            row("conv5", conv(256, 3, 1, 1, 1.0)),
            row("relu5", Kind::Relu),
            row("pool5", pool),
            row("fc6", fc(4096, 1.0)),
            row("relu6", Kind::Relu),
            row("drop6", Kind::Dropout),
            row("fc7", fc(4096, 1.0)),
            row("relu7", Kind::Relu),
            row("drop7", Kind::Dropout),
            row("fc8", fc(self.classes, 0.0)),
        ];
        // The first row reads the image, which every column sees whole.
        rows[0].reads_all_columns = true;
        rows
    }

    /// cuda-convnet's layers-18pct.cfg (Krizhevsky's CIFAR-10 net) without its two response
    /// normalisation layers: its weight std per layer (1e-4 for conv1, 0.01 after), zero biases,
    /// and its order of pooling before the ReLU in the first block. Its pools are floor-mode here
    /// (32 -> 15 -> 7 -> 3 maps; cuda-convnet's give 16 -> 8 -> 4).
    fn cifar10(&self) -> Vec<Layer> {
        let row = |name: &str, kind: Kind| Layer {
            name: name.to_string(),
            kind,
            columns: 1,
            reads_all_columns: true,
        };
        let conv = |out, std| Kind::Conv {
            out,
            k: 5,
            stride: 1,
            pad: 2,
            init: ParamInit { std, bias: 0.0 },
        };
        let max = Kind::MaxPool { size: 3, stride: 2 };
        let avg = Kind::AvgPool { size: 3, stride: 2 };
        vec![
            row("conv1", conv(32, 1e-4)),
            row("pool1", max),
            row("relu1", Kind::Relu),
            row("conv2", conv(32, 0.01)),
            row("relu2", Kind::Relu),
            row("pool2", avg),
            row("conv3", conv(64, 0.01)),
            row("relu3", Kind::Relu),
            row("pool3", avg),
            row(
                "fc10",
                Kind::Fc {
                    out: self.classes,
                    init: ParamInit::paper(0.0),
                },
            ),
        ]
    }

    /// Shapes, parameters and multiply-adds of every row, checking that the table holds together
    /// (settings, wiring, and a geometry where every layer's output is at least 1x1): a clear
    /// error naming the layer, never a panic.
    pub fn plan(&self) -> Result<Vec<PlannedLayer>> {
        self.check_settings()?;
        let layers = self.layers();
        self.check_wiring(&layers)?;
        let mut dims = Dims {
            c: 3,
            h: self.input_size,
            w: self.input_size,
        };
        let mut in_columns = 1;
        let mut out = Vec::new();
        for layer in layers {
            let planned = plan_row(layer, dims, in_columns, self.input_size)?;
            dims = planned.output;
            in_columns = planned.layer.columns;
            out.push(planned);
        }
        self.check_classifier(&out)?;
        Ok(out)
    }

    fn check_settings(&self) -> Result<()> {
        if self.classes < 2 {
            return Err(Error::Config(format!(
                "--classes must be at least 2 (got {})",
                self.classes
            )));
        }
        if self.input_size == 0 {
            return Err(Error::Config("the input size must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "dropout probability must be in [0, 1) (got {})",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Names unique, one column count throughout, the built-in net's cross-column list naming its
    /// weighted rows, and fully connected rows reading all columns.
    fn check_wiring(&self, layers: &[Layer]) -> Result<()> {
        let Some(first) = layers.first() else {
            return Err(Error::Config(format!(
                "net {} has no layers",
                self.net.label()
            )));
        };
        for (i, l) in layers.iter().enumerate() {
            if layers[..i].iter().any(|m| m.name == l.name) {
                return Err(Error::Config(format!("two layers are named {:?}", l.name)));
            }
            if l.columns == 0 || l.columns != first.columns {
                return Err(Error::Config(format!(
                    "layer {}: {} columns, but {} has {} (a net has one column count \
                     throughout)",
                    l.name, l.columns, first.name, first.columns
                )));
            }
        }
        // The cross-column list is how the paper's nets are wired; the others' rows say it.
        if matches!(self.net, Net::Paper | Net::OneColumn) {
            for name in &self.cross_column {
                let known = layers[1..]
                    .iter()
                    .any(|l| &l.name == name && l.kind.is_weighted());
                if !known {
                    return Err(Error::Config(format!(
                        "cross-column layer {name:?} is not one of conv2..conv5, fc6..fc8"
                    )));
                }
            }
        }
        if let Some(fc) = layers
            .iter()
            .find(|l| l.columns > 1 && matches!(l.kind, Kind::Fc { .. }) && !l.reads_all_columns)
        {
            return Err(Error::Config(format!(
                "{} must read all columns: a fully connected layer that reads only its own \
                 column has no one-device equivalent here (add it to the cross-column list)",
                fc.name
            )));
        }
        Ok(())
    }

    /// The last row is the classifier: fully connected, `classes` wide (the loss reads it).
    fn check_classifier(&self, plan: &[PlannedLayer]) -> Result<()> {
        let last = plan.last().expect("check_wiring refuses an empty table");
        match last.layer.kind {
            Kind::Fc { out, .. } if out == self.classes => Ok(()),
            Kind::Fc { out, .. } => Err(Error::Config(format!(
                "layer {}: the classifier (the last layer) has {out} outputs, but the net is \
                 for {} classes",
                last.layer.name, self.classes
            ))),
            _ => Err(Error::Config(format!(
                "layer {}: the last layer must be fully connected (the classifier the loss \
                 reads)",
                last.layer.name
            ))),
        }
    }
}

/// torchvision's widths: conv1..conv5 kernels, then the hidden fully connected layers' units.
pub const TORCHVISION_WIDTHS: [usize; 6] = [64, 192, 384, 256, 256, 4096];

/// torchvision's `alexnet` with `widths` (conv1..conv5, hidden fc; [`TORCHVISION_WIDTHS`] for
/// its own): its `features` and `classifier` in their order, dropout before fc6 and fc7. The
/// weights start as PyTorch's default initialisation does in variance (its uniform
/// `1/sqrt(3 fan_in)` std, here Gaussian), the biases at 0.
pub fn torchvision_rows(widths: [usize; 6], classes: usize) -> Vec<Layer> {
    let [c1, c2, c3, c4, c5, hidden] = widths;
    let row = |name: &str, kind: Kind| Layer {
        name: name.to_string(),
        kind,
        columns: 1,
        reads_all_columns: true,
    };
    let pytorch = |fan_in: usize| ParamInit {
        std: 1.0 / (3.0 * fan_in as f64).sqrt(),
        bias: 0.0,
    };
    let conv = |out, k, stride, pad, c_in: usize| Kind::Conv {
        out,
        k,
        stride,
        pad,
        init: pytorch(c_in * k * k),
    };
    let fc = |out, fan_in| Kind::Fc {
        out,
        init: pytorch(fan_in),
    };
    let pool = Kind::MaxPool { size: 3, stride: 2 };
    vec![
        row("conv1", conv(c1, 11, 4, 2, 3)),
        row("relu1", Kind::Relu),
        row("pool1", pool),
        row("conv2", conv(c2, 5, 1, 2, c1)),
        row("relu2", Kind::Relu),
        row("pool2", pool),
        row("conv3", conv(c3, 3, 1, 1, c2)),
        row("relu3", Kind::Relu),
        row("conv4", conv(c4, 3, 1, 1, c3)),
        row("relu4", Kind::Relu),
        row("conv5", conv(c5, 3, 1, 1, c4)),
        row("relu5", Kind::Relu),
        row("pool5", pool),
        row("avgpool", Kind::AdaptiveAvgPool { out: 6 }),
        row("drop6", Kind::Dropout),
        row("fc6", fc(hidden, c5 * 36)),
        row("relu6", Kind::Relu),
        row("drop7", Kind::Dropout),
        row("fc7", fc(hidden, hidden)),
        row("relu7", Kind::Relu),
        row("fc8", fc(classes, hidden)),
    ]
}

/// Caffe's LRN in bvlc_alexnet: `local_size: 5, alpha: 0.0001, beta: 0.75`, Caffe's k = 1, and
/// Caffe divides alpha by the window size.
pub const CAFFE_LRN: LrnParams = LrnParams {
    size: 5,
    alpha: 1e-4,
    beta: 0.75,
    k: 1.0,
    alpha_over_n: true,
};

/// Caffe's bvlc_alexnet widths: conv1..conv5 kernels, then the hidden fully connected units.
pub const CAFFE_WIDTHS: [usize; 6] = [96, 256, 384, 384, 256, 4096];

/// Caffe's bvlc_alexnet with `widths` ([`CAFFE_WIDTHS`] for its own): the paper's two-column
/// table and wiring (Caffe's `group: 2` in conv2, conv4, conv5), its LRN rows normalising over
/// all the row's maps with [`CAFFE_LRN`], and its initialisation (std 0.005 in fc6 and fc7, 0.01
/// elsewhere; biases 0.1 in conv2, conv4, conv5, fc6, fc7, else 0).
pub fn caffe_rows(widths: [usize; 6], classes: usize) -> Vec<Layer> {
    let [c1, c2, c3, c4, c5, hidden] = widths;
    let row = |name: &str, kind: Kind, reads_all_columns: bool| Layer {
        name: name.to_string(),
        kind,
        columns: 2,
        reads_all_columns,
    };
    let conv = |out, k, stride, pad, bias| Kind::Conv {
        out,
        k,
        stride,
        pad,
        init: ParamInit { std: 0.01, bias },
    };
    let fc = |out, std, bias| Kind::Fc {
        out,
        init: ParamInit { std, bias },
    };
    let lrn = Kind::Lrn {
        params: CAFFE_LRN,
        across_columns: true,
    };
    let pool = Kind::MaxPool { size: 3, stride: 2 };
    vec![
        row("conv1", conv(c1, 11, 4, 0, 0.0), true),
        row("relu1", Kind::Relu, false),
        row("norm1", lrn, false),
        row("pool1", pool, false),
        row("conv2", conv(c2, 5, 1, 2, 0.1), false),
        row("relu2", Kind::Relu, false),
        row("norm2", lrn, false),
        row("pool2", pool, false),
        row("conv3", conv(c3, 3, 1, 1, 0.0), true),
        row("relu3", Kind::Relu, false),
        row("conv4", conv(c4, 3, 1, 1, 0.1), false),
        row("relu4", Kind::Relu, false),
        row("conv5", conv(c5, 3, 1, 1, 0.1), false),
        row("relu5", Kind::Relu, false),
        row("pool5", pool, false),
        row("fc6", fc(hidden, 0.005, 0.1), true),
        row("relu6", Kind::Relu, false),
        row("drop6", Kind::Dropout, false),
        row("fc7", fc(hidden, 0.005, 0.1), true),
        row("relu7", Kind::Relu, false),
        row("drop7", Kind::Dropout, false),
        row("fc8", fc(classes, 0.01, 0.0), true),
    ]
}

/// A row's output shape, parameters, forward multiply-adds and (conv) geometry.
type RowCost = (Dims, u64, u64, Option<ConvShape>);

/// One row's output shape, parameters and multiply-adds from its input (`in_columns` columns),
/// or an error naming the layer when its settings or its input's size do not fit it.
fn plan_row(
    layer: Layer,
    input: Dims,
    in_columns: usize,
    input_size: usize,
) -> Result<PlannedLayer> {
    let fail = |msg: String| row_error(&layer, msg);
    let (output, params, macs, conv) = match layer.kind {
        Kind::Conv { .. } => plan_conv(&layer, input, in_columns, input_size)?,
        Kind::MaxPool { size, stride } | Kind::AvgPool { size, stride } => {
            if size == 0 || stride == 0 {
                return Err(fail("window size and stride must be at least 1".into()));
            }
            if input.h < size || input.w < size {
                let what = format!("{size}x{size} pooling window");
                return Err(too_small(&layer, input, input_size, &what));
            }
            let output = Dims {
                c: input.c,
                h: (input.h - size) / stride + 1,
                w: (input.w - size) / stride + 1,
            };
            (output, 0, 0, None)
        }
        Kind::Fc { out: d_out, .. } => {
            if d_out == 0 {
                return Err(fail("out must be at least 1".into()));
            }
            let d_in = input.len();
            let output = Dims {
                c: d_out,
                h: 1,
                w: 1,
            };
            let (params, macs) = ((d_in + 1) * d_out, d_in * d_out);
            (output, params as u64, macs as u64, None)
        }
        Kind::Lrn {
            params,
            across_columns,
        } => {
            if params.size == 0 {
                return Err(fail("the LRN window size must be at least 1".into()));
            }
            if !across_columns && !input.c.is_multiple_of(layer.columns) {
                return Err(fail(format!(
                    "normalises within each column, but its {} maps do not split into {} \
                     equal columns",
                    input.c, layer.columns
                )));
            }
            (input, 0, 0, None)
        }
        Kind::AdaptiveAvgPool { out } => {
            if (input.h, input.w) != (out, out) {
                return Err(fail(format!(
                    "adaptive average pooling to {out}x{out} is offered only where it is the \
                     identity, but its input maps are {}x{} (input size {input_size}); torchvision's \
                     net gets {out}x{out} maps at 224 px",
                    input.h, input.w
                )));
            }
            (input, 0, 0, None)
        }
        Kind::Relu | Kind::Tanh | Kind::Dropout => (input, 0, 0, None),
    };
    Ok(PlannedLayer {
        layer,
        input,
        output,
        params,
        macs,
        conv,
    })
}

/// An error naming the layer.
fn row_error(layer: &Layer, msg: String) -> Error {
    Error::Config(format!("layer {}: {msg}", layer.name))
}

/// The layer's input maps are smaller than its window `what`: the input is too small for the net.
fn too_small(layer: &Layer, input: Dims, input_size: usize, what: &str) -> Error {
    row_error(
        layer,
        format!(
            "gets {}x{} maps, smaller than its {what}: input size {input_size} is too small for \
             this net",
            input.h, input.w
        ),
    )
}

/// A convolution row's cost: grouped by the input's columns unless it reads all of them.
fn plan_conv(layer: &Layer, input: Dims, in_columns: usize, input_size: usize) -> Result<RowCost> {
    let Kind::Conv {
        out: c_out,
        k,
        stride,
        pad,
        ..
    } = layer.kind
    else {
        unreachable!("plan_conv on a non-conv row")
    };
    if c_out == 0 || k == 0 || stride == 0 {
        return Err(row_error(
            layer,
            "out, kernel size and stride must be at least 1".into(),
        ));
    }
    let groups = if layer.reads_all_columns {
        1
    } else {
        in_columns
    };
    if !input.c.is_multiple_of(groups) || !c_out.is_multiple_of(groups) {
        return Err(row_error(
            layer,
            format!(
                "reads only its own column, but its {} input and {c_out} output channels do not \
             split into {groups} columns",
                input.c
            ),
        ));
    }
    if input.h + 2 * pad < k || input.w + 2 * pad < k {
        let what = format!("{k}x{k} kernel (padding {pad})");
        return Err(too_small(layer, input, input_size, &what));
    }
    let s = ConvShape {
        n: 1,
        c_in: input.c,
        h: input.h,
        w: input.w,
        c_out,
        kh: k,
        kw: k,
        stride,
        pad,
        groups,
    };
    let output = Dims {
        c: c_out,
        h: s.h_out(),
        w: s.w_out(),
    };
    Ok((output, (s.w_len() + c_out) as u64, s.macs(), Some(s)))
}

/// A row with its shapes worked out for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedLayer {
    pub layer: Layer,
    pub input: Dims,
    pub output: Dims,
    pub params: u64,
    /// Forward multiply-adds per image.
    pub macs: u64,
    /// For Conv rows, the geometry at batch 1 (set `n` for a batch).
    pub conv: Option<ConvShape>,
}

impl ArchConfig {
    /// Column `col`'s share of every row, for running the columns on separate executors
    /// (Section 3.2): each conv/fc row keeps its slice of the kernels, reads either its own
    /// column of the previous row's maps or (cross-column rows) all of them, and LRN normalises
    /// within the column. Executing every column's rows and gathering at the cross-column rows
    /// computes exactly the function of [`ArchConfig::plan`].
    pub fn column_plan(&self, col: usize) -> Result<Vec<ColumnRow>> {
        let cols = self.columns();
        if col >= cols {
            return Err(Error::Config(format!(
                "column {col} of a {cols}-column network"
            )));
        }
        let mut in_columns = 1; // the image: every column reads it whole
        let mut rows = Vec::new();
        for p in self.plan()? {
            if let Kind::Lrn {
                across_columns: true,
                ..
            } = p.layer.kind
            {
                if cols > 1 {
                    return Err(Error::Config(format!(
                        "layer {}: LRN across all columns' maps needs every column's maps in \
                         one place; run the net whole (without --gpus/--executors)",
                        p.layer.name
                    )));
                }
            }
            let weighted = p.layer.kind.is_weighted();
            let gather = weighted && p.layer.reads_all_columns && in_columns > 1;
            let input = if gather || in_columns == 1 {
                p.input
            } else {
                Dims {
                    c: column_range(p.input.c, col, in_columns).len(),
                    ..p.input
                }
            };
            let out = column_range(p.output.c, col, p.layer.columns);
            let output = Dims {
                c: out.len(),
                ..p.output
            };
            let conv = p.conv.map(|c| ConvShape {
                c_in: input.c,
                c_out: out.len(),
                groups: 1,
                ..c
            });
            let (params, macs) = match (p.layer.kind, conv) {
                (Kind::Conv { .. }, Some(c)) => ((c.w_len() + c.c_out) as u64, c.macs()),
                (Kind::Fc { .. }, _) => (
                    ((input.len() + 1) * out.len()) as u64,
                    (input.len() * out.len()) as u64,
                ),
                _ => (0, 0),
            };
            in_columns = p.layer.columns;
            rows.push(ColumnRow {
                plan: PlannedLayer {
                    // Within one column there is one column (LRN windows stop at its edges).
                    layer: Layer {
                        columns: 1,
                        ..p.layer
                    },
                    input,
                    output,
                    params,
                    macs,
                    conv,
                },
                out_total: p.output.c,
                out,
                gather,
            });
        }
        Ok(rows)
    }
}

/// Channels (units) `c * col / cols .. c * (col + 1) / cols`: column `col`'s share of `c`.
pub fn column_range(c: usize, col: usize, cols: usize) -> std::ops::Range<usize> {
    c * col / cols..c * (col + 1) / cols
}

/// A row as one executor runs it: the whole row (one device) or one column's share of it.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnRow {
    /// The row with this executor's shapes.
    pub plan: PlannedLayer,
    /// This executor's output channels (units) among the whole row's `out_total`.
    pub out: std::ops::Range<usize>,
    pub out_total: usize,
    /// The input is every column's previous output, concatenated along channels: the
    /// activations cross between executors here (forward) and the gradients back (backward).
    pub gather: bool,
}

impl ColumnRow {
    /// A whole row, as the one-device model runs it.
    pub fn whole(plan: PlannedLayer) -> ColumnRow {
        ColumnRow {
            out: 0..plan.output.c,
            out_total: plan.output.c,
            gather: false,
            plan,
        }
    }
}

/// The summary table `alexnet-cli summary` prints.
pub fn summary_table(cfg: &ArchConfig) -> Result<String> {
    use std::fmt::Write;
    let plan = cfg.plan()?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<7} {:<22} {:<8} {:<18} {:>14} {:>14}",
        "layer", "kind", "columns", "output (CxHxW)", "parameters", "mult-adds"
    );
    let (mut params, mut macs) = (0u64, 0u64);
    for p in &plan {
        let kind = match p.layer.kind {
            Kind::Conv { k, stride, pad, .. } => {
                let g = p.conv.map(|c| c.groups).unwrap_or(1);
                format!("conv {k}x{k}/{stride} pad {pad} g{g}")
            }
            Kind::Relu => "relu".into(),
            Kind::Tanh => "tanh".into(),
            Kind::Lrn {
                params,
                across_columns,
            } => {
                let all = if across_columns { " all maps" } else { "" };
                format!("lrn n={}{all}", params.size)
            }
            Kind::MaxPool { size, stride } => format!("maxpool {size}/{stride}"),
            Kind::AvgPool { size, stride } => format!("avgpool {size}/{stride}"),
            Kind::AdaptiveAvgPool { out } => format!("adaptive avgpool {out}x{out}"),
            Kind::Fc { .. } => "fully connected".into(),
            Kind::Dropout => format!("dropout p={}", cfg.dropout),
        };
        let wiring = match p.layer.kind {
            Kind::Conv { .. } | Kind::Fc { .. } if p.layer.reads_all_columns => "all",
            Kind::Conv { .. } | Kind::Fc { .. } => "own",
            _ => "",
        };
        let columns = if wiring.is_empty() {
            format!("{}", p.layer.columns)
        } else {
            format!("{} ({wiring})", p.layer.columns)
        };
        let _ = writeln!(
            s,
            "{:<7} {:<22} {:<8} {:<18} {:>14} {:>14}",
            p.layer.name,
            kind,
            columns,
            format!("{}x{}x{}", p.output.c, p.output.h, p.output.w),
            group_digits(p.params),
            group_digits(p.macs)
        );
        params += p.params;
        macs += p.macs;
    }
    let _ = writeln!(
        s,
        "total: {} parameters, {} multiply-adds per image forward ({:.3} GFLOP), input 3x{}x{}",
        group_digits(params),
        group_digits(macs),
        2.0 * macs as f64 / 1e9,
        cfg.input_size,
        cfg.input_size
    );
    let _ = writeln!(
        s,
        "columns: \"own\" = each column reads only its own column's maps (grouped), \"all\" = reads both (the paper's cross-GPU connections)"
    );
    Ok(s)
}

fn group_digits(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_net_has_60_965_224_parameters_and_paper_shapes() {
        let plan = ArchConfig::default().plan().unwrap();
        let total: u64 = plan.iter().map(|p| p.params).sum();
        assert_eq!(total, 60_965_224);
        let out = |name: &str| plan.iter().find(|p| p.layer.name == name).unwrap().output;
        assert_eq!(
            out("conv1"),
            Dims {
                c: 96,
                h: 55,
                w: 55
            }
        );
        assert_eq!(
            out("pool1"),
            Dims {
                c: 96,
                h: 27,
                w: 27
            }
        );
        assert_eq!(
            out("conv2"),
            Dims {
                c: 256,
                h: 27,
                w: 27
            }
        );
        assert_eq!(
            out("pool2"),
            Dims {
                c: 256,
                h: 13,
                w: 13
            }
        );
        assert_eq!(
            out("conv5"),
            Dims {
                c: 256,
                h: 13,
                w: 13
            }
        );
        assert_eq!(out("pool5"), Dims { c: 256, h: 6, w: 6 });
        assert_eq!(
            out("fc8"),
            Dims {
                c: 1000,
                h: 1,
                w: 1
            }
        );
        let groups = |name: &str| {
            plan.iter()
                .find(|p| p.layer.name == name)
                .unwrap()
                .conv
                .unwrap()
                .groups
        };
        assert_eq!(
            ["conv1", "conv2", "conv3", "conv4", "conv5"].map(groups),
            [1, 2, 1, 2, 2]
        );
        let macs: u64 = plan.iter().map(|p| p.macs).sum();
        assert!((2.0 * macs as f64 / 1e9 - 1.45).abs() < 0.01, "{macs}");
    }

    #[test]
    fn columns_split_every_layer_and_add_up_to_the_whole() {
        let cfg = ArchConfig::default();
        let whole = cfg.plan().unwrap();
        let cols = [cfg.column_plan(0).unwrap(), cfg.column_plan(1).unwrap()];
        for (i, p) in whole.iter().enumerate() {
            let (a, b) = (&cols[0][i], &cols[1][i]);
            assert_eq!(a.plan.params + b.plan.params, p.params, "{}", p.layer.name);
            assert_eq!(a.plan.macs + b.plan.macs, p.macs, "{}", p.layer.name);
            assert_eq!(a.out.end, b.out.start);
            assert_eq!(b.out.end, p.output.c);
        }
        let gathers: Vec<&str> = cols[0]
            .iter()
            .filter(|r| r.gather)
            .map(|r| r.plan.layer.name.as_str())
            .collect();
        assert_eq!(gathers, PAPER_CROSS_COLUMN);
        let conv2 = cols[0]
            .iter()
            .find(|r| r.plan.layer.name == "conv2")
            .unwrap();
        assert_eq!((conv2.plan.input.c, conv2.plan.output.c), (48, 128));
    }

    #[test]
    fn connectivity_is_data() {
        let cfg = ArchConfig {
            cross_column: ["conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        };
        let plan = cfg.plan().unwrap();
        let conv4 = plan.iter().find(|p| p.layer.name == "conv4").unwrap();
        assert_eq!(conv4.conv.unwrap().groups, 1);
        let fc_own = ArchConfig {
            cross_column: vec!["conv3".into()],
            ..Default::default()
        };
        assert!(fc_own.plan().unwrap_err().to_string().contains("fc6"));
        let unknown = ArchConfig {
            cross_column: vec!["conv9".into()],
            ..Default::default()
        };
        assert!(unknown.plan().is_err());
    }

    #[test]
    fn input_224_does_not_give_55() {
        let cfg = ArchConfig {
            input_size: 224,
            ..Default::default()
        };
        let plan = cfg.plan().unwrap();
        assert_eq!(plan[0].output.h, 54);
    }

    #[test]
    fn the_smallest_input_is_the_geometry_s() {
        let at = |net: Net, size: usize| ArchConfig::for_net(net, None, Some(size)).plan();
        // The paper's nets: pool5 gets 1x1 maps at 67, 2x2 (under its 3x3 window) at 66.
        let plan = at(Net::Paper, 67).unwrap();
        let pool5 = plan.iter().find(|p| p.layer.name == "pool5").unwrap();
        assert_eq!(pool5.output, Dims { c: 256, h: 1, w: 1 });
        let e = at(Net::OneColumn, 66).unwrap_err().to_string();
        assert!(e.contains("layer pool5") && e.contains("2x2 maps"), "{e}");
        // cifar10: 32 -> 15 -> 7 -> 3 maps, 15 px is the least (pool3 then gets 3x3).
        let plan = at(Net::Cifar10, 32).unwrap();
        let fc10 = plan.last().unwrap();
        assert_eq!(
            (fc10.input, fc10.output.c),
            (Dims { c: 64, h: 3, w: 3 }, 10)
        );
        assert!(at(Net::Cifar10, 15).is_ok());
        let e = at(Net::Cifar10, 14).unwrap_err().to_string();
        assert!(e.contains("layer pool3") && e.contains("too small"), "{e}");
    }

    #[test]
    fn rows_carry_their_initialisation_and_lrn_constants() {
        let cfg = ArchConfig {
            lrn: LrnParams {
                alpha_over_n: true,
                ..LrnParams::PAPER
            },
            ..Default::default()
        };
        let layers = cfg.layers();
        let bias = |name: &str| {
            let row = layers.iter().find(|l| l.name == name).unwrap();
            row.kind.init().unwrap().bias
        };
        // Section 5: biases 1 in conv2, conv4, conv5 and the hidden fully connected layers.
        let names = [
            "conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8",
        ];
        assert_eq!(names.map(bias), [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        let lrns: Vec<Kind> = layers
            .iter()
            .map(|l| l.kind)
            .filter(|k| matches!(k, Kind::Lrn { .. }))
            .collect();
        let want = Kind::Lrn {
            params: cfg.lrn,
            across_columns: false,
        };
        assert_eq!(lrns, [want, want]);
    }

    #[test]
    fn lrn_across_columns_runs_whole_but_not_split() {
        let mut table = ArchConfig::default().layers();
        for row in &mut table {
            if let Kind::Lrn { across_columns, .. } = &mut row.kind {
                *across_columns = true;
            }
        }
        let cfg = ArchConfig::for_net(
            Net::Table(Table {
                name: "caffe-lrn".into(),
                input_size: None,
                layers: table,
            }),
            None,
            None,
        );
        assert!(cfg.plan().is_ok());
        assert!(summary_table(&cfg).unwrap().contains("lrn n=5 all maps"));
        let e = cfg.column_plan(0).unwrap_err().to_string();
        assert!(
            e.contains("layer lrn1") && e.contains("across all columns"),
            "{e}"
        );
    }

    #[test]
    fn too_small_input_is_a_clear_error() {
        let cfg = ArchConfig {
            input_size: 40,
            ..Default::default()
        };
        let err = cfg.plan().unwrap_err().to_string();
        assert!(err.contains("too small"), "{err}");
    }
}
