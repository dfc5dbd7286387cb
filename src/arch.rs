//! The architecture as data (Section 3.5, Figure 2): one row per layer, as cuda-convnet describes
//! its nets in a layer file. The model executes this table; `alexnet-cli summary` prints it.

use crate::engine::{ConvShape, LrnParams};
use crate::error::{Error, Result};

/// What a row computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// `out` kernels of `k x k`, stride, zero padding. Groups come from the column wiring.
    Conv {
        out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    },
    Relu,
    /// Cross-channel LRN within each column.
    Lrn,
    MaxPool {
        size: usize,
        stride: usize,
    },
    /// Fully connected to `out` units (the input is flattened in C,H,W order).
    Fc {
        out: usize,
    },
    /// Dropout with drop probability from the config.
    Dropout,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
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

/// Which table to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Preset {
    /// The paper's two-column net (Figure 2).
    Paper,
    /// The paper's one-column comparison net (footnote 2): half the kernels in conv1..conv4,
    /// full conv5 and FC layers.
    OneColumn,
}

/// Everything that determines the network's function.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArchConfig {
    pub preset: Preset,
    pub classes: usize,
    /// Input height = width. 227 makes conv1's 55x55 exact (the paper's "224" does not).
    pub input_size: usize,
    pub lrn_size: usize,
    pub lrn_alpha: f32,
    pub lrn_beta: f32,
    pub lrn_k: f32,
    pub lrn_alpha_over_n: bool,
    /// Drop probability in fc6 and fc7.
    pub dropout: f32,
    /// true: keep at train time unscaled, multiply by (1-p) at test time (the paper, Section
    /// 4.2). false: "inverted" dropout, scale by 1/(1-p) at train time (PyTorch, Caffe).
    pub dropout_paper_scaling: bool,
    /// Which of conv2..conv5, fc6..fc8 read all columns of their input (the rest read only
    /// their own column; conv1 reads the image). The paper: "choosing the pattern of
    /// connectivity is a problem for cross-validation". Fully connected layers always read all
    /// columns.
    #[serde(default = "paper_cross_column")]
    pub cross_column: Vec<String>,
}

impl Default for ArchConfig {
    fn default() -> Self {
        ArchConfig {
            preset: Preset::Paper,
            classes: 1000,
            input_size: 227,
            lrn_size: 5,
            lrn_alpha: 1e-4,
            lrn_beta: 0.75,
            lrn_k: 2.0,
            lrn_alpha_over_n: false,
            dropout: 0.5,
            dropout_paper_scaling: true,
            cross_column: paper_cross_column(),
        }
    }
}

impl ArchConfig {
    pub fn lrn(&self) -> LrnParams {
        LrnParams {
            size: self.lrn_size,
            alpha: self.lrn_alpha,
            beta: self.lrn_beta,
            k: self.lrn_k,
            alpha_over_n: self.lrn_alpha_over_n,
        }
    }

    /// How many columns (the paper's GPUs) every layer is split into.
    pub fn columns(&self) -> usize {
        match self.preset {
            Preset::Paper => 2,
            Preset::OneColumn => 1,
        }
    }

    /// The layer table for this config.
    pub fn layers(&self) -> Vec<Layer> {
        let (c1, c2, c3, c4) = match self.preset {
            Preset::Paper => (96, 256, 384, 384),
            Preset::OneColumn => (48, 128, 192, 192),
        };
        let cols = self.columns();
        // conv1 reads the image, which every column sees whole.
        let row = |name: &str, kind: Kind| Layer {
            name: name.to_string(),
            kind,
            columns: cols,
            reads_all_columns: name == "conv1" || self.cross_column.iter().any(|c| c == name),
        };
        let conv = |out, k, stride, pad| Kind::Conv {
            out,
            k,
            stride,
            pad,
        };
        let pool = Kind::MaxPool { size: 3, stride: 2 };
        vec![
            row("conv1", conv(c1, 11, 4, 0)),
            row("relu1", Kind::Relu),
            row("lrn1", Kind::Lrn),
            row("pool1", pool),
            row("conv2", conv(c2, 5, 1, 2)),
            row("relu2", Kind::Relu),
            row("lrn2", Kind::Lrn),
            row("pool2", pool),
            row("conv3", conv(c3, 3, 1, 1)),
            row("relu3", Kind::Relu),
            row("conv4", conv(c4, 3, 1, 1)),
            row("relu4", Kind::Relu),
            row("conv5", conv(256, 3, 1, 1)),
            row("relu5", Kind::Relu),
            row("pool5", pool),
            row("fc6", Kind::Fc { out: 4096 }),
            row("relu6", Kind::Relu),
            row("drop6", Kind::Dropout),
            row("fc7", Kind::Fc { out: 4096 }),
            row("relu7", Kind::Relu),
            row("drop7", Kind::Dropout),
            row("fc8", Kind::Fc { out: self.classes }),
        ]
    }

    /// Shapes, parameters and multiply-adds of every row, checking that the geometry works out
    /// (e.g. an input too small for three poolings is a clear error, not a panic).
    pub fn plan(&self) -> Result<Vec<PlannedLayer>> {
        if self.classes < 2 {
            return Err(Error::Config(format!(
                "--classes must be at least 2 (got {})",
                self.classes
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "dropout probability must be in [0, 1) (got {})",
                self.dropout
            )));
        }
        let layers = self.layers();
        for name in &self.cross_column {
            let known = layers.iter().any(|l| {
                &l.name == name
                    && l.name != "conv1"
                    && matches!(l.kind, Kind::Conv { .. } | Kind::Fc { .. })
            });
            if !known {
                return Err(Error::Config(format!(
                    "cross-column layer {name:?} is not one of conv2..conv5, fc6..fc8"
                )));
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
        let mut dims = Dims {
            c: 3,
            h: self.input_size,
            w: self.input_size,
        };
        let mut in_columns = 1;
        let mut out = Vec::new();
        for layer in layers {
            let input = dims;
            let too_small = |what: &str| {
                Error::Config(format!(
                    "input size {} is too small: {} gets {}x{} maps, smaller than its {what}; \
                     use --input-size 67 or larger",
                    self.input_size, layer.name, input.h, input.w
                ))
            };
            let (params, macs, conv) = match layer.kind {
                Kind::Conv {
                    out: c_out,
                    k,
                    stride,
                    pad,
                } => {
                    let groups = if layer.reads_all_columns {
                        1
                    } else {
                        in_columns
                    };
                    if input.h + 2 * pad < k || input.w + 2 * pad < k {
                        return Err(too_small("kernel"));
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
                    dims = Dims {
                        c: c_out,
                        h: s.h_out(),
                        w: s.w_out(),
                    };
                    ((s.w_len() + c_out) as u64, s.macs(), Some(s))
                }
                Kind::MaxPool { size, stride } => {
                    if input.h < size || input.w < size {
                        return Err(too_small("pooling window"));
                    }
                    dims = Dims {
                        c: input.c,
                        h: (input.h - size) / stride + 1,
                        w: (input.w - size) / stride + 1,
                    };
                    (0, 0, None)
                }
                Kind::Fc { out: d_out } => {
                    let d_in = input.len();
                    dims = Dims {
                        c: d_out,
                        h: 1,
                        w: 1,
                    };
                    (((d_in + 1) * d_out) as u64, (d_in * d_out) as u64, None)
                }
                Kind::Relu | Kind::Lrn | Kind::Dropout => (0, 0, None),
            };
            in_columns = layer.columns;
            out.push(PlannedLayer {
                layer,
                input,
                output: dims,
                params,
                macs,
                conv,
            });
        }
        Ok(out)
    }
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
            let weighted = matches!(p.layer.kind, Kind::Conv { .. } | Kind::Fc { .. });
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
            Kind::Lrn => format!("lrn n={}", cfg.lrn_size),
            Kind::MaxPool { size, stride } => format!("maxpool {size}/{stride}"),
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
    fn too_small_input_is_a_clear_error() {
        let cfg = ArchConfig {
            input_size: 40,
            ..Default::default()
        };
        let err = cfg.plan().unwrap_err().to_string();
        assert!(err.contains("too small"), "{err}");
    }
}
