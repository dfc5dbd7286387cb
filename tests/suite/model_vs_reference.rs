//! The whole network, fast engine vs the f64 oracle: the paper's AlexNet (227x227, 1000
//! classes, two columns, dropout on) forward and backward on a batch of 2, with the reference
//! network composed from `alexnet-reference`'s layer functions by walking the same table.

use crate::common::rel_err;
use alexnet::arch::{ArchConfig, Kind, Net};
use alexnet::engine::cpu::CpuEngine;
use alexnet::model::{Init, Model};
use alexnet::rng::{dropout_keep, Rng};
use alexnet_reference as r;

/// Loss and every parameter gradient of `cfg`'s net on (images, labels), computed in f64 by
/// the reference layers, with the same parameters and dropout masks as the engine's model.
/// The backward pass takes its kinks' branches from the engine: `kinks(row)` is, for a ReLU
/// row, the engine's output (whose sign is its decision) and, for a max-pool row, the engine's
/// input (whose first maximum gets the gradient). Where a ReLU input lies within f32 rounding
/// of 0, or two values of a pooling window within rounding of each other, either branch is a
/// correct f32 result, and taking the other one would move a whole gradient element (as
/// Caffe's gradient checker skips kinks); everywhere else the branches agree anyway.
fn reference_net(
    cfg: &ArchConfig,
    params: &[(String, Vec<usize>, Vec<f32>)],
    images: &[f32],
    labels: &[u32],
    n: usize,
    step_seed: u64,
    kinks: &dyn Fn(usize) -> Vec<f64>,
) -> (f64, Vec<Vec<f64>>) {
    let plan = cfg.plan().unwrap();
    let p64: Vec<Vec<f64>> = params
        .iter()
        .map(|(_, _, v)| v.iter().map(|&x| x as f64).collect())
        .collect();
    // Forward, keeping each row's input for the backward pass.
    let mut x: Vec<f64> = images.iter().map(|&v| v as f64).collect();
    let mut inputs = Vec::new();
    let mut masks = Vec::new();
    let mut param_index = Vec::new();
    let mut next_param = 0;
    for (row, p) in plan.iter().enumerate() {
        inputs.push(x.clone());
        param_index.push(next_param);
        x = match p.layer.kind {
            Kind::Conv { .. } => {
                let s = conv_of(p, n);
                next_param += 2;
                r::conv2d_forward(&s, &x, &p64[next_param - 2], &p64[next_param - 1])
            }
            Kind::Fc { out, .. } => {
                let s = r::Fc {
                    n,
                    d_in: p.input.len(),
                    d_out: out,
                };
                next_param += 2;
                r::fc_forward(&s, &x, &p64[next_param - 2], &p64[next_param - 1])
            }
            Kind::Relu => r::relu_forward(&x),
            Kind::Tanh => r::tanh_forward(&x),
            Kind::Lrn {
                params,
                across_columns,
            } => r::lrn_forward(&lrn_of(p, n, &params, across_columns), &x),
            Kind::MaxPool { size, stride } => r::maxpool_forward(&pool_of(p, n, size, stride), &x),
            Kind::AvgPool { size, stride } => r::avgpool_forward(&pool_of(p, n, size, stride), &x),
            // The plan admits adaptive pooling only where it is the identity.
            Kind::AdaptiveAvgPool { .. } => x,
            Kind::Dropout => {
                let seed = Model::<CpuEngine>::dropout_seed(step_seed, row);
                let keep: Vec<bool> = (0..x.len())
                    .map(|i| dropout_keep(seed, i as u64, cfg.dropout))
                    .collect();
                let y = r::dropout_forward(&x, &keep, 1.0);
                masks.push(keep);
                y
            }
        };
    }
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    let (loss, probs) = r::softmax_xent_forward(n, cfg.classes, &x, &labels);
    let mut dy = r::softmax_xent_backward(n, cfg.classes, &probs, &labels);
    let mut grads = vec![Vec::new(); params.len()];
    for (row, p) in plan.iter().enumerate().rev() {
        let x = &inputs[row];
        dy = match p.layer.kind {
            Kind::Conv { .. } => {
                let s = conv_of(p, n);
                let (dx, dw, db) = r::conv2d_backward(&s, x, &p64[param_index[row]], &dy);
                grads[param_index[row]] = dw;
                grads[param_index[row] + 1] = db;
                dx
            }
            Kind::Fc { out, .. } => {
                let s = r::Fc {
                    n,
                    d_in: p.input.len(),
                    d_out: out,
                };
                let (dx, dw, db) = r::fc_backward(&s, x, &p64[param_index[row]], &dy);
                grads[param_index[row]] = dw;
                grads[param_index[row] + 1] = db;
                dx
            }
            Kind::Relu => r::relu_backward(&kinks(row), &dy),
            // tanh' from the forward's output, as the layer keeps it
            Kind::Tanh => r::tanh_backward(&r::tanh_forward(x), &dy),
            Kind::Lrn {
                params,
                across_columns,
            } => r::lrn_backward(&lrn_of(p, n, &params, across_columns), x, &dy),
            Kind::MaxPool { size, stride } => {
                r::maxpool_backward(&pool_of(p, n, size, stride), &kinks(row), &dy)
            }
            Kind::AvgPool { size, stride } => {
                r::avgpool_backward(&pool_of(p, n, size, stride), x.len(), &dy)
            }
            Kind::AdaptiveAvgPool { .. } => dy,
            Kind::Dropout => r::dropout_backward(&dy, &masks.pop().unwrap(), 1.0),
        };
    }
    (loss, grads)
}

fn conv_of(p: &alexnet::arch::PlannedLayer, n: usize) -> r::Conv2d {
    let c = p.conv.unwrap();
    r::Conv2d {
        n,
        c_in: c.c_in,
        h: c.h,
        w: c.w,
        c_out: c.c_out,
        kh: c.kh,
        kw: c.kw,
        stride: c.stride,
        pad: c.pad,
        groups: c.groups,
    }
}

fn lrn_of(
    p: &alexnet::arch::PlannedLayer,
    n: usize,
    l: &alexnet::engine::LrnParams,
    across_columns: bool,
) -> r::Lrn {
    r::Lrn {
        n,
        c: p.input.c,
        h: p.input.h,
        w: p.input.w,
        groups: if across_columns { 1 } else { p.layer.columns },
        size: l.size,
        alpha: l.alpha as f64,
        beta: l.beta as f64,
        k: l.k as f64,
        alpha_over_n: l.alpha_over_n,
    }
}

fn pool_of(p: &alexnet::arch::PlannedLayer, n: usize, size: usize, stride: usize) -> r::Pool {
    r::Pool {
        n,
        c: p.input.c,
        h: p.input.h,
        w: p.input.w,
        size,
        stride,
    }
}

/// One training-mode forward and backward of `cfg`'s net on random images, engine against
/// reference: the loss and every parameter gradient.
fn matches_the_reference(cfg: &ArchConfig, init: Init, labels: &[u32]) {
    let n = labels.len();
    let engine = CpuEngine::new(2).unwrap();
    let mut model = Model::new(&engine, cfg.clone(), init, 7, n).unwrap();
    let mut rng = Rng::new(11);
    // Mean-subtracted pixels are of order +-50 on the 0..255 scale.
    let images: Vec<f32> = (0..n * 3 * cfg.input_size * cfg.input_size)
        .map(|_| (rng.normal() * 50.0) as f32)
        .collect();
    let step_seed = 42;
    model.forward(&engine, &images, Some(step_seed)).unwrap();
    let loss = model.backward(&engine, labels, Some(step_seed)).unwrap();
    let params = model.read_params(&engine).unwrap();
    let grads = model.read_grads(&engine).unwrap();

    // The engine's ReLU outputs and max-pool inputs (the previous row's output: in-place rows
    // write into their input's buffer before the next row reads it).
    let plan = cfg.plan().unwrap();
    let kinks = |row: usize| -> Vec<f64> {
        let name = match plan[row].layer.kind {
            Kind::Relu => &plan[row].layer.name,
            _ => &plan[row - 1].layer.name,
        };
        let act = model.activation(&engine, name).unwrap();
        act.iter().map(|&v| v as f64).collect()
    };
    let (ref_loss, ref_grads) = reference_net(cfg, &params, &images, labels, n, step_seed, &kinks);
    // The loss is a sum over ~20 layers of f32 dot products of length up to 9216; each adds
    // rounding of order sqrt(K) * 6e-8 relative, so 1e-5 relative is ample yet would catch any
    // wrong element of a layer.
    let loss_err = ((loss as f64 - ref_loss) / ref_loss).abs();
    assert!(loss_err < 1e-5, "loss {loss} vs reference {ref_loss}");
    for ((name, _, g), rg) in grads.iter().zip(&ref_grads) {
        assert_eq!(g.len(), rg.len(), "{name}");
        // Gradients pass back through the same layers again (twice the rounding of the
        // forward; Winograd's convolutions round about 10x more than im2col's, 5e-6 measured
        // on the paper's net); norm-wise 1e-4 bounds that while a single wrong column (a
        // misplaced group, a missing LRN term) gives errors of order 1e-2 or more.
        let e = rel_err(g, rg);
        println!("{name:<14} relative error {e:.2e}");
        assert!(e < 1e-4, "{name}: relative error {e:.3e}");
    }
}

#[test]
fn paper_alexnet_batch_2_matches_the_reference() {
    matches_the_reference(&ArchConfig::default(), Init::Paper, &[3, 917]);
}

#[test]
fn caffe_preset_matches_the_reference() {
    // Caffe's LRN over all 96/256 maps of the two-column layers (k = 1, alpha / n), at the
    // smallest input the paper's geometry allows.
    let cfg = ArchConfig::for_net(Net::Caffe, Some(10), Some(67));
    matches_the_reference(&cfg, Init::Paper, &[3, 9]);
}

#[test]
fn torchvision_structure_at_224_px_matches_the_reference() {
    // torchvision's rows (conv1 pad 2, no LRN, pool5 to 6x6 and the identity adaptive pool,
    // dropout before fc6 and fc7) with narrow layers so that the f64 reference stays quick.
    let table = alexnet::arch::Table {
        name: "torchvision-narrow".into(),
        input_size: Some(224),
        layers: alexnet::arch::torchvision_rows([8, 16, 24, 16, 16, 32], 10),
    };
    let cfg = ArchConfig::for_net(Net::Table(table), None, None);
    matches_the_reference(&cfg, Init::Paper, &[3, 9]);
}

#[test]
fn cifar10_net_at_32_px_matches_the_reference() {
    // Average pooling, pooling before the ReLU, a 3x3 last map: the other built-in table.
    let cfg = ArchConfig::for_net(Net::Cifar10, None, None);
    matches_the_reference(&cfg, Init::Paper, &[3, 9, 0]);
}

#[test]
fn a_net_file_with_every_kind_matches_the_reference() {
    // Two columns; a convolution reading its own column and one reading both; tanh; LRN within
    // columns (Caffe's alpha/n) and across them; both poolings; dropout; a hidden fc; 21 px.
    let text = r#"
        columns = 2
        [[layer]]
        name = "c1"
        kind = "conv"
        out = 8
        size = 3
        init_std = 0.1
        [[layer]]
        name = "t1"
        kind = "tanh"
        [[layer]]
        name = "n1"
        kind = "lrn"
        size = 3
        alpha = 0.5
        alpha_over_n = true
        [[layer]]
        name = "p1"
        kind = "max-pool"
        size = 3
        stride = 2
        [[layer]]
        name = "c2"
        kind = "conv"
        out = 12
        size = 3
        pad = 1
        init_std = 0.05
        init_bias = 0.1
        [[layer]]
        name = "r2"
        kind = "relu"
        [[layer]]
        name = "c3"
        kind = "conv"
        out = 8
        size = 3
        reads = "all"
        init_std = 0.05
        [[layer]]
        name = "n3"
        kind = "lrn"
        size = 5
        alpha = 0.1
        across_columns = true
        [[layer]]
        name = "p3"
        kind = "avg-pool"
        size = 2
        stride = 2
        [[layer]]
        name = "f4"
        kind = "fc"
        out = 16
        init_std = 0.1
        [[layer]]
        name = "d4"
        kind = "dropout"
        [[layer]]
        name = "f5"
        kind = "fc"
        out = 5
        init_std = 0.1
    "#;
    let table = alexnet::netfile::parse(text, false, "every-kind").unwrap();
    let cfg = ArchConfig::for_net(Net::Table(table), None, Some(21));
    let plan = cfg.plan().unwrap();
    let groups: Vec<usize> = plan
        .iter()
        .filter_map(|p| p.conv)
        .map(|c| c.groups)
        .collect();
    assert_eq!(
        groups,
        [1, 2, 1],
        "c1 reads the image, c2 its own column, c3 both"
    );
    matches_the_reference(&cfg, Init::Paper, &[4, 0]);
}
