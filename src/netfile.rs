//! Net files (`--net FILE`): a layer table written by hand, in the spirit of cuda-convnet's layer
//! files, so a net can be defined without recompiling. TOML, or JSON when the file name ends in
//! `.json`; the same fields either way:
//!
//! ```toml
//! name = "cifar10-18pct"   # optional: what messages and the summary call it
//! columns = 1              # optional: the columns (the paper's GPUs) every layer is split into
//! input_size = 32          # optional: the input side `summary` uses by default
//!
//! [[layer]]                # one section per layer, in order
//! name = "conv1"
//! kind = "conv"            # conv, fc, relu, tanh, lrn, max-pool, avg-pool,
//!                          # adaptive-avg-pool, dropout
//! out = 32                 # conv: kernels; fc: units; adaptive-avg-pool: output side
//! size = 5                 # conv: kernel side; pools and lrn: window
//! stride = 1               # conv (default 1), pools
//! pad = 2                  # conv (default 0)
//! init_std = 0.0001        # conv, fc: weights ~ N(0, init_std^2) (default 0.01, Section 5)
//! init_bias = 0.0          # conv, fc: every bias (default 0)
//! reads = "all"            # conv, fc: read "all" columns of the input or only its "own"
//! ```
//!
//! LRN rows take `size`, `alpha`, `beta`, `k` (default the paper's 5, 1e-4, 0.75, 2),
//! `alpha_over_n` (Caffe's convention, default false) and `across_columns` (normalise over all
//! maps instead of within each column, default false). A field a kind does not use, an unknown
//! field, an unknown kind or a missing one is an error naming the layer. Whether the geometry
//! fits an input size is checked when the net is planned ([`crate::arch::ArchConfig::plan`]).

use std::path::Path;

use crate::arch::{Kind, Layer, ParamInit, Table};
use crate::engine::LrnParams;
use crate::error::{Error, Result};

/// The file as written: every field optional here, so that what is missing or misplaced is
/// reported by [`layer`] with the layer's name rather than by the parser.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NetFile {
    name: Option<String>,
    columns: Option<usize>,
    input_size: Option<usize>,
    layer: Vec<LayerSpec>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerSpec {
    name: Option<String>,
    kind: Option<String>,
    out: Option<usize>,
    size: Option<usize>,
    stride: Option<usize>,
    pad: Option<usize>,
    init_std: Option<f64>,
    init_bias: Option<f32>,
    reads: Option<Reads>,
    alpha: Option<f32>,
    beta: Option<f32>,
    k: Option<f32>,
    alpha_over_n: Option<bool>,
    across_columns: Option<bool>,
}

#[derive(Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reads {
    All,
    Own,
}

impl LayerSpec {
    /// The names of the optional fields the file sets.
    fn present(&self) -> Vec<&'static str> {
        let fields = [
            ("out", self.out.is_some()),
            ("size", self.size.is_some()),
            ("stride", self.stride.is_some()),
            ("pad", self.pad.is_some()),
            ("init_std", self.init_std.is_some()),
            ("init_bias", self.init_bias.is_some()),
            ("reads", self.reads.is_some()),
            ("alpha", self.alpha.is_some()),
            ("beta", self.beta.is_some()),
            ("k", self.k.is_some()),
            ("alpha_over_n", self.alpha_over_n.is_some()),
            ("across_columns", self.across_columns.is_some()),
        ];
        fields
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }
}

/// Reads a net file into a layer table.
pub fn read(path: &Path) -> Result<Table> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let fallback = path
        .file_stem()
        .map_or_else(|| "net".into(), |s| s.to_string_lossy().into_owned());
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    parse(&text, json, &fallback)
        .map_err(|msg| Error::Config(format!("net file {}: {msg}", path.display())))
}

/// A net file's text (TOML, or JSON when `json`) as a layer table called `fallback_name` unless
/// it names itself.
pub fn parse(text: &str, json: bool, fallback_name: &str) -> std::result::Result<Table, String> {
    let file: NetFile = if json {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        toml::from_str(text).map_err(|e| e.to_string())?
    };
    let columns = file.columns.unwrap_or(1);
    if columns == 0 {
        return Err("columns must be at least 1".into());
    }
    let layers = file
        .layer
        .iter()
        .enumerate()
        .map(|(i, spec)| layer(spec, i, columns))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Table {
        name: file.name.unwrap_or_else(|| fallback_name.to_string()),
        input_size: file.input_size,
        layers,
    })
}

/// Row `index` of the table from its section, or why it is not one.
fn layer(spec: &LayerSpec, index: usize, columns: usize) -> std::result::Result<Layer, String> {
    let name = spec
        .name
        .clone()
        .ok_or_else(|| format!("layer {} (counting from 1) has no name", index + 1))?;
    let (kind, fields) = kind(spec).map_err(|msg| format!("layer {name}: {msg}"))?;
    // With one column there is nothing to choose; with several, a convolution reads its own
    // column unless told (except the first layer, which reads the image whole) and a fully
    // connected layer reads all of them.
    let reads_all_columns = match spec.reads {
        Some(r) => matches!(r, Reads::All),
        None => columns == 1 || index == 0 || matches!(kind, Kind::Fc { .. }),
    };
    if let Some(extra) = spec.present().into_iter().find(|f| !fields.contains(f)) {
        let kind_name = spec.kind.as_deref().unwrap_or_default();
        return Err(format!(
            "layer {name}: `{extra}` does not apply to a {kind_name} layer"
        ));
    }
    Ok(Layer {
        name,
        kind,
        columns,
        reads_all_columns,
    })
}

/// A section's kind with its settings, and the optional fields that kind takes.
fn kind(spec: &LayerSpec) -> std::result::Result<(Kind, &'static [&'static str]), String> {
    let kind_name = spec.kind.as_deref().ok_or("no kind")?;
    let need = |field: &str, v: Option<usize>| {
        v.ok_or_else(|| format!("a {kind_name} layer needs `{field}`"))
    };
    let init = ParamInit {
        std: spec.init_std.unwrap_or(0.01),
        bias: spec.init_bias.unwrap_or(0.0),
    };
    Ok(match kind_name {
        "conv" => (
            Kind::Conv {
                out: need("out", spec.out)?,
                k: need("size", spec.size)?,
                stride: spec.stride.unwrap_or(1),
                pad: spec.pad.unwrap_or(0),
                init,
            },
            &[
                "out",
                "size",
                "stride",
                "pad",
                "init_std",
                "init_bias",
                "reads",
            ],
        ),
        "fc" => (
            Kind::Fc {
                out: need("out", spec.out)?,
                init,
            },
            &["out", "init_std", "init_bias", "reads"],
        ),
        "relu" => (Kind::Relu, &[]),
        "tanh" => (Kind::Tanh, &[]),
        "dropout" => (Kind::Dropout, &[]),
        "lrn" => (
            lrn(spec),
            &[
                "size",
                "alpha",
                "beta",
                "k",
                "alpha_over_n",
                "across_columns",
            ],
        ),
        "max-pool" => (
            Kind::MaxPool {
                size: need("size", spec.size)?,
                stride: need("stride", spec.stride)?,
            },
            &["size", "stride"],
        ),
        "avg-pool" => (
            Kind::AvgPool {
                size: need("size", spec.size)?,
                stride: need("stride", spec.stride)?,
            },
            &["size", "stride"],
        ),
        "adaptive-avg-pool" => (
            Kind::AdaptiveAvgPool {
                out: need("out", spec.out)?,
            },
            &["out"],
        ),
        other => {
            return Err(format!(
                "unknown kind {other:?} (one of conv, fc, relu, tanh, lrn, max-pool, avg-pool, \
                 adaptive-avg-pool, dropout)"
            ))
        }
    })
}

/// An LRN row's settings, the paper's where the file says nothing.
fn lrn(spec: &LayerSpec) -> Kind {
    let paper = LrnParams::PAPER;
    Kind::Lrn {
        params: LrnParams {
            size: spec.size.unwrap_or(paper.size),
            alpha: spec.alpha.unwrap_or(paper.alpha),
            beta: spec.beta.unwrap_or(paper.beta),
            k: spec.k.unwrap_or(paper.k),
            alpha_over_n: spec.alpha_over_n.unwrap_or(paper.alpha_over_n),
        },
        across_columns: spec.across_columns.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{ArchConfig, Net};

    fn err(text: &str) -> String {
        parse(text, false, "t").unwrap_err()
    }

    #[test]
    fn the_example_files_are_the_presets_row_for_row() {
        for (file, preset) in [
            ("paper.toml", Net::Paper),
            ("cifar10.toml", Net::Cifar10),
            ("torchvision.toml", Net::Torchvision),
            ("caffe.toml", Net::Caffe),
        ] {
            let table = read(
                &Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("nets")
                    .join(file),
            )
            .unwrap();
            let built_in = ArchConfig::for_net(preset, None, None);
            let from_file = ArchConfig::for_net(Net::Table(table), None, None);
            assert_eq!(from_file.layers(), built_in.layers(), "{file}");
            assert_eq!(
                (from_file.classes, from_file.input_size),
                (built_in.classes, built_in.input_size)
            );
        }
    }

    #[test]
    fn json_reads_like_toml() {
        let json = r#"{"name": "tiny", "layer": [
            {"name": "c", "kind": "conv", "out": 4, "size": 3},
            {"name": "t", "kind": "tanh"},
            {"name": "f", "kind": "fc", "out": 2}]}"#;
        let toml = "name = \"tiny\"\n[[layer]]\nname = \"c\"\nkind = \"conv\"\nout = 4\nsize = 3\n\
                    [[layer]]\nname = \"t\"\nkind = \"tanh\"\n\
                    [[layer]]\nname = \"f\"\nkind = \"fc\"\nout = 2\n";
        assert_eq!(
            parse(json, true, "x").unwrap(),
            parse(toml, false, "x").unwrap()
        );
    }

    #[test]
    fn bad_files_are_clear_errors_naming_the_layer() {
        let e = err("[[layer]]\nname = \"n1\"\nkind = \"norm\"\n");
        assert!(
            e.contains("layer n1") && e.contains("unknown kind \"norm\""),
            "{e}"
        );
        let e = err("[[layer]]\nname = \"c1\"\nkind = \"conv\"\nsize = 3\n");
        assert!(e.contains("layer c1") && e.contains("needs `out`"), "{e}");
        let e = err("[[layer]]\nname = \"r1\"\nkind = \"relu\"\nsize = 3\n");
        assert!(
            e.contains("layer r1") && e.contains("`size` does not apply to a relu"),
            "{e}"
        );
        let e = err("[[layer]]\nname = \"p1\"\nkind = \"max-pool\"\nsize = 3\n");
        assert!(
            e.contains("layer p1") && e.contains("needs `stride`"),
            "{e}"
        );
        let e = err("[[layer]]\nname = \"c1\"\n");
        assert!(e.contains("layer c1: no kind"), "{e}");
        let e = err("[[layer]]\nkind = \"relu\"\n");
        assert!(e.contains("layer 1 (counting from 1) has no name"), "{e}");
        // Unknown fields (a typo would otherwise be silently ignored) and broken syntax: the
        // parser's message, with the line.
        let e = err("[[layer]]\nname = \"c1\"\nkind = \"conv\"\nstrid = 2\n");
        assert!(e.contains("unknown field") && e.contains("strid"), "{e}");
        let e = err("[[layer]\n");
        assert!(e.contains("line 1"), "{e}");
        let e = err("columns = 0\nlayer = []\n");
        assert!(e.contains("columns must be at least 1"), "{e}");
    }

    #[test]
    fn geometry_that_does_not_fit_names_the_layer() {
        let text = "[[layer]]\nname = \"c1\"\nkind = \"conv\"\nout = 4\nsize = 5\n\
                    [[layer]]\nname = \"p1\"\nkind = \"avg-pool\"\nsize = 4\nstride = 4\n\
                    [[layer]]\nname = \"f1\"\nkind = \"fc\"\nout = 3\n";
        let net = || Net::Table(parse(text, false, "t").unwrap());
        // 8 px: c1 gives 4x4, p1 one 1x1 window: fits.
        assert!(ArchConfig::for_net(net(), None, Some(8)).plan().is_ok());
        // 7 px: c1 gives 3x3, smaller than p1's 4x4 window.
        let e = ArchConfig::for_net(net(), None, Some(7))
            .plan()
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer p1") && e.contains("3x3 maps"), "{e}");
        // 4 px: smaller than c1's kernel.
        let e = ArchConfig::for_net(net(), None, Some(4))
            .plan()
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer c1") && e.contains("5x5 kernel"), "{e}");
        // The classifier's width is the class count.
        let e = ArchConfig::for_net(net(), Some(10), Some(8))
            .plan()
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer f1") && e.contains("3 outputs") && e.contains("10 classes"));
    }

    #[test]
    fn inconsistent_tables_name_the_layer() {
        let two_cols = |rows: &str| {
            let table = parse(&format!("columns = 2\n{rows}"), false, "t").unwrap();
            ArchConfig::for_net(Net::Table(table), None, Some(8))
                .plan()
                .unwrap_err()
                .to_string()
        };
        // A convolution reading its own column of 3 maps (an uneven split) with 4 kernels.
        let e = two_cols(
            "[[layer]]\nname = \"c1\"\nkind = \"conv\"\nout = 3\nsize = 3\n\
             [[layer]]\nname = \"c2\"\nkind = \"conv\"\nout = 4\nsize = 1\n\
             [[layer]]\nname = \"f\"\nkind = \"fc\"\nout = 2\n",
        );
        assert!(
            e.contains("layer c2") && e.contains("do not split into 2 columns"),
            "{e}"
        );
        // Per-column LRN on the image's 3 maps.
        let e = two_cols(
            "[[layer]]\nname = \"n\"\nkind = \"lrn\"\n[[layer]]\nname = \"f\"\nkind = \"fc\"\nout = 2\n",
        );
        assert!(
            e.contains("layer n") && e.contains("3 maps do not split"),
            "{e}"
        );
        // A fully connected layer that reads only its own column.
        let e = two_cols(
            "[[layer]]\nname = \"c1\"\nkind = \"conv\"\nout = 4\nsize = 3\n\
             [[layer]]\nname = \"f\"\nkind = \"fc\"\nout = 2\nreads = \"own\"\n",
        );
        assert!(e.contains("f must read all columns"), "{e}");
        // Two layers of one name, and a last layer that is not a classifier.
        let e = two_cols(
            "[[layer]]\nname = \"a\"\nkind = \"relu\"\n[[layer]]\nname = \"a\"\nkind = \"tanh\"\n",
        );
        assert!(e.contains("two layers are named \"a\""), "{e}");
        let e = two_cols("[[layer]]\nname = \"r\"\nkind = \"relu\"\n");
        assert!(
            e.contains("layer r: the last layer must be fully connected"),
            "{e}"
        );
    }
}
