//! `alexnet-cli import`: a peer's pretrained AlexNet as one of our checkpoints, with the peer's
//! preprocessing, so that `predict`, `eval` and `train --init-from` use it as they use ours.
//!
//! torchvision: its `alexnet` state_dict (`features.N.*`, `classifier.N.*`) becomes the
//! `torchvision` table's rows. Its preprocessing (resize the shorter side to 256, centre crop
//! 224, `(x / 255 - mean) / std` per channel) is held in our terms: the checkpoint's mean image
//! is 256x256 of `255 * mean` per channel (which sets the resize side), and `1 / (255 * std)` is
//! folded into conv1's weights per input channel. Both are exact: conv1 is linear in its input
//! and its zero padding is zero in either scale.
//!
//! Caffe: a `.caffemodel`'s conv1..fc8 blobs become the `caffe` table's rows (the same OIHW and
//! C,H,W-flattened layouts as ours). Caffe's nets read BGR images minus a BGR mean image on the
//! 0..255 scale: conv1's input channels are reversed so that it reads our RGB, and the mean
//! (`--mean`) is reversed likewise. Without a mean the checkpoint is written but says which mean
//! it needs, and `predict` refuses it with that message.

pub mod caffe;
pub mod pickle;
pub mod torch;

use std::path::{Path, PathBuf};

use crate::arch::{
    caffe_rows, torchvision_rows, ArchConfig, Net, Table, CAFFE_WIDTHS, TORCHVISION_WIDTHS,
};
use crate::checkpoint::{Checkpoint, NamedTensor};
use crate::error::{Error, Result};

/// The peers whose weights are read.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// torchvision's `alexnet` state_dict (`.pth` from torch.save, or `.safetensors`).
    Torchvision,
    /// Caffe's bvlc_alexnet `.caffemodel` (or a net of its structure).
    Caffe,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// Whose file it is.
    #[arg(long, value_enum)]
    pub from: Peer,
    /// The peer's weights: for torchvision a state_dict saved by torch.save (zip format, e.g.
    /// alexnet-owt-7be5be79.pth) or as safetensors. Only tensors are read: a pickle that names
    /// anything else (a whole pickled model, code) is refused.
    pub file: PathBuf,
    /// Caffe only: the mean image the net was trained with, BGR on the 0..255 scale: Caffe's
    /// imagenet_mean.binaryproto, ilsvrc_2012_mean.npy (3x256x256), or a .npy of 3 per-channel
    /// values. Without it the checkpoint cannot predict until re-imported with one.
    #[arg(long, value_name = "FILE")]
    pub mean: Option<PathBuf>,
    /// Where to write the checkpoint (safetensors, our format).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Class names, one per line in output order: for ImageNet's 1000 classes the standard
    /// synset_words.txt ("n01440764 tench, Tinca tinca", sorted by wnid, the order of both
    /// peers' outputs). Without it, classes are shown by index.
    #[arg(long, value_name = "FILE")]
    pub class_names: Option<PathBuf>,
}

/// Reads the peer's file, writes our checkpoint and returns it.
pub fn import(args: &ImportArgs) -> Result<Checkpoint> {
    let mut ckpt = match args.from {
        Peer::Torchvision => {
            let sd = torch::read_state_dict(&args.file)?;
            if args.mean.is_some() {
                return Err(Error::Config(
                    "--mean is for Caffe's nets; torchvision's normalisation is built in".into(),
                ));
            }
            torchvision_checkpoint(&sd, &args.file)?
        }
        Peer::Caffe => {
            let blobs = caffe::read_caffemodel(&args.file)?;
            caffe_checkpoint(&blobs, args.mean.as_deref(), &args.file)?
        }
    };
    if let Some(path) = &args.class_names {
        ckpt.class_names = read_class_names(path, ckpt.arch.classes)?;
    }
    ckpt.extra_metadata
        .insert("imported_from".into(), args.file.display().to_string());
    ckpt.save(&args.out)?;
    Ok(ckpt)
}

/// One name per line; there must be one per class.
pub fn read_class_names(path: &Path, classes: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != classes {
        return Err(Error::data(
            path,
            format!(
                "{} class names for a net with {classes} classes (one name per line)",
                names.len()
            ),
        ));
    }
    Ok(names)
}

/// torchvision's state_dict names of our rows: `features.N` and `classifier.N` are the
/// positions of the weighted modules in its two `nn.Sequential`s.
pub const TORCHVISION_NAMES: [(&str, &str); 8] = [
    ("features.0", "conv1"),
    ("features.3", "conv2"),
    ("features.6", "conv3"),
    ("features.8", "conv4"),
    ("features.10", "conv5"),
    ("classifier.1", "fc6"),
    ("classifier.4", "fc7"),
    ("classifier.6", "fc8"),
];

/// torchvision's `transforms.Normalize` constants for its ImageNet models, on 0..1 pixels.
pub const TORCHVISION_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const TORCHVISION_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// `transforms.Resize(256)`, `transforms.CenterCrop(224)`.
pub const TORCHVISION_RESIZE: usize = 256;
pub const TORCHVISION_CROP: usize = 224;

/// Our checkpoint of a torchvision alexnet state_dict. Widths are read from the tensors, so a
/// narrower net of the same structure imports too (as a table named for its widths).
pub fn torchvision_checkpoint(sd: &torch::StateDict, path: &Path) -> Result<Checkpoint> {
    let bad = |msg: String| Error::data(path, msg);
    let ours = |theirs: &str| {
        TORCHVISION_NAMES
            .iter()
            .find(|(t, _)| *t == theirs)
            .map(|(_, o)| *o)
    };
    for name in sd.keys() {
        let module = name.rsplit_once('.').map_or(name.as_str(), |(m, _)| m);
        if ours(module).is_none() || !(name.ends_with(".weight") || name.ends_with(".bias")) {
            return Err(bad(format!(
                "holds {name}, which torchvision's alexnet does not (its tensors are \
                 features.{{0,3,6,8,10}}.{{weight,bias}} and classifier.{{1,4,6}}.{{weight,bias}})"
            )));
        }
    }
    let get = |theirs: &str, what: &str| {
        sd.get(&format!("{theirs}.{what}")).ok_or_else(|| {
            bad(format!(
                "has no {theirs}.{what}: not a complete torchvision alexnet state_dict"
            ))
        })
    };
    let width = |theirs: &str| get(theirs, "weight").map(|(shape, _)| shape[0]);
    let mut widths = [0; 6];
    for (w, theirs) in widths.iter_mut().zip([
        "features.0",
        "features.3",
        "features.6",
        "features.8",
        "features.10",
        "classifier.1",
    ]) {
        *w = width(theirs)?;
    }
    let classes = width("classifier.6")?;
    let net = if widths == TORCHVISION_WIDTHS {
        Net::Torchvision
    } else {
        let label = widths.map(|w| w.to_string()).join("-");
        Net::Table(Table {
            name: format!("torchvision-{label}"),
            input_size: Some(TORCHVISION_CROP),
            layers: torchvision_rows(widths, classes),
        })
    };
    let arch = ArchConfig {
        // The peers train with "inverted" dropout: nothing to scale at test time.
        dropout_paper_scaling: false,
        ..ArchConfig::for_net(net, Some(classes), Some(TORCHVISION_CROP))
    };
    let mut params = Vec::new();
    for (name, shape) in Checkpoint::param_shapes(&arch)? {
        let (row, what) = name
            .rsplit_once('.')
            .expect("param names are ROW.weight/bias");
        let theirs = TORCHVISION_NAMES
            .iter()
            .find(|(_, o)| *o == row)
            .map(|(t, _)| *t)
            .expect("the torchvision table's weighted rows are the eight named");
        let (their_shape, data) = get(theirs, what)?;
        if *their_shape != shape {
            return Err(bad(format!(
                "{theirs}.{what} is {their_shape:?}, but a torchvision alexnet with these widths \
                 needs {shape:?} (for {name})"
            )));
        }
        params.push(NamedTensor::new(name, shape, data.clone()));
    }
    fold_input_scale(&mut params[0], TORCHVISION_STD.map(|s| 1.0 / (255.0 * s)));
    let side = TORCHVISION_RESIZE;
    let mean = TORCHVISION_MEAN
        .iter()
        .flat_map(|m| std::iter::repeat_n(255.0 * m, side * side))
        .collect();
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        "preprocessing".into(),
        "torchvision: resize the shorter side to 256, centre crop 224, (x/255 - mean)/std per \
         channel with mean 0.485,0.456,0.406 and std 0.229,0.224,0.225; held here as the mean \
         image 255*mean and 1/(255*std) folded into conv1.weight"
            .into(),
    );
    Ok(Checkpoint {
        arch,
        class_names: Vec::new(),
        mean: Some(mean),
        mean_side: side,
        eigval: None,
        eigvec: None,
        params,
        momentum: Vec::new(),
        train_state: None,
        extra_metadata: extra,
    })
}

/// Multiplies conv1's weights `[out, 3, k, k]` by `scale[c]` for input channel `c`.
fn fold_input_scale(conv1: &mut NamedTensor, scale: [f32; 3]) {
    let per_channel = conv1.shape[2] * conv1.shape[3];
    for (i, w) in conv1.data.iter_mut().enumerate() {
        *w *= scale[(i / per_channel) % conv1.shape[1]];
    }
}

/// The key of `alexnet.extra` naming the mean image a checkpoint lacks (`predict` quotes it).
pub const MEAN_NEEDED: &str = "mean_needed";

/// Caffe's conventional stored side: its ImageNet mean image is 256x256, crops 227.
pub const CAFFE_SIDE: usize = 256;
pub const CAFFE_CROP: usize = 227;

/// Our checkpoint of a Caffe AlexNet's blobs (layers named conv1..conv5, fc6..fc8 as in
/// bvlc_alexnet), with its BGR mean image from `mean` if given. Widths are read from the blobs.
pub fn caffe_checkpoint(
    blobs: &caffe::Blobs,
    mean: Option<&Path>,
    path: &Path,
) -> Result<Checkpoint> {
    let bad = |msg: String| Error::data(path, msg);
    let blob = |layer: &str, i: usize| {
        blobs.get(layer).and_then(|b| b.get(i)).ok_or_else(|| {
            bad(format!(
                "has no {} blob for layer {layer}: not a Caffe AlexNet (its learned layers are \
                 conv1..conv5 and fc6..fc8)",
                ["weight", "bias"][i]
            ))
        })
    };
    // A legacy blob is 4-D (an fc weight 1x1xOUTxIN): its first non-1 dimension is the width.
    let squeeze = |shape: &[usize]| -> Vec<usize> {
        let first = shape.iter().position(|&d| d != 1).unwrap_or(shape.len());
        shape[first..].to_vec()
    };
    let width =
        |layer: &str| blob(layer, 0).map(|(shape, _)| squeeze(shape).first().copied().unwrap_or(0));
    let mut widths = [0; 6];
    for (w, layer) in widths
        .iter_mut()
        .zip(["conv1", "conv2", "conv3", "conv4", "conv5", "fc6"])
    {
        *w = width(layer)?;
    }
    let classes = width("fc8")?;
    let net = if widths == CAFFE_WIDTHS {
        Net::Caffe
    } else {
        let label = widths.map(|w| w.to_string()).join("-");
        Net::Table(Table {
            name: format!("caffe-{label}"),
            input_size: Some(CAFFE_CROP),
            layers: caffe_rows(widths, classes),
        })
    };
    let arch = ArchConfig {
        dropout_paper_scaling: false,
        ..ArchConfig::for_net(net, Some(classes), Some(CAFFE_CROP))
    };
    let mut params = Vec::new();
    for (name, shape) in Checkpoint::param_shapes(&arch)? {
        let (layer, what) = name
            .rsplit_once('.')
            .expect("param names are ROW.weight/bias");
        let (their_shape, data) = blob(layer, usize::from(what == "bias"))?;
        if squeeze(their_shape) != squeeze(&shape) {
            return Err(bad(format!(
                "layer {layer}'s {what} blob is {their_shape:?}, but a Caffe AlexNet with these \
                 widths needs {shape:?}"
            )));
        }
        params.push(NamedTensor::new(name, shape, data.clone()));
    }
    reverse_input_channels(&mut params[0]);
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        "preprocessing".into(),
        "caffe: BGR pixels on 0..255 minus the mean image, 227 crop; conv1's input channels \
         reversed here to read RGB, the mean image reversed likewise"
            .into(),
    );
    let (mean, mean_side) = match mean {
        Some(m) => {
            let (bgr, side) = caffe::read_mean_bgr(m, CAFFE_SIDE)?;
            if side < CAFFE_CROP {
                return Err(Error::data(
                    m,
                    format!("a {side}x{side} mean image, smaller than the {CAFFE_CROP} crop"),
                ));
            }
            let plane = side * side;
            let rgb = (0..3)
                .rev()
                .flat_map(|c| bgr[c * plane..(c + 1) * plane].to_vec())
                .collect();
            (Some(rgb), side)
        }
        None => {
            extra.insert(
                MEAN_NEEDED.into(),
                "Caffe's nets subtract the mean image of their training set: re-import with \
                 --mean FILE, for bvlc_alexnet Caffe's ImageNet mean (imagenet_mean.binaryproto \
                 or ilsvrc_2012_mean.npy, 3x256x256 BGR)"
                    .into(),
            );
            (None, CAFFE_SIDE)
        }
    };
    Ok(Checkpoint {
        arch,
        class_names: Vec::new(),
        mean,
        mean_side,
        eigval: None,
        eigvec: None,
        params,
        momentum: Vec::new(),
        train_state: None,
        extra_metadata: extra,
    })
}

/// conv1's weights `[out, c, k, k]` with their input channels in reverse order (BGR <-> RGB).
fn reverse_input_channels(conv1: &mut NamedTensor) {
    let (c, plane) = (conv1.shape[1], conv1.shape[2] * conv1.shape[3]);
    for kernel in conv1.data.chunks_exact_mut(c * plane) {
        let old = kernel.to_vec();
        for (ch, dst) in kernel.chunks_exact_mut(plane).enumerate() {
            dst.copy_from_slice(&old[(c - 1 - ch) * plane..][..plane]);
        }
    }
}
