//! Reading a Caffe `.caffemodel`: the protobuf `NetParameter` of caffe.proto, through the few
//! messages and fields that hold learned blobs (both the current `layer` list and the legacy V1
//! `layers` of files such as bvlc_alexnet.caffemodel), and Caffe's mean image from a
//! `.binaryproto` (`BlobProto`) or a NumPy `.npy`. Field numbers are caffe.proto's; fields not
//! declared here are skipped by the decoder.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;

use crate::error::{Error, Result};

/// `message BlobShape { repeated int64 dim = 1 [packed = true]; }`
#[derive(Clone, PartialEq, Message)]
pub struct BlobShape {
    #[prost(int64, repeated, tag = "1")]
    pub dim: Vec<i64>,
}

/// `message BlobProto`: the shape (or the legacy num/channels/height/width) and the values.
#[derive(Clone, PartialEq, Message)]
pub struct BlobProto {
    #[prost(message, optional, tag = "7")]
    pub shape: Option<BlobShape>,
    #[prost(float, repeated, tag = "5")]
    pub data: Vec<f32>,
    #[prost(double, repeated, tag = "8")]
    pub double_data: Vec<f64>,
    #[prost(int32, optional, tag = "1")]
    pub num: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    pub channels: Option<i32>,
    #[prost(int32, optional, tag = "3")]
    pub height: Option<i32>,
    #[prost(int32, optional, tag = "4")]
    pub width: Option<i32>,
}

/// `message LayerParameter` (name = 1, type = 2, blobs = 7).
#[derive(Clone, PartialEq, Message)]
pub struct LayerParameter {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub r#type: Option<String>,
    #[prost(message, repeated, tag = "7")]
    pub blobs: Vec<BlobProto>,
}

/// `message V1LayerParameter` (name = 4, type = 5 as the V1 enum, blobs = 6).
#[derive(Clone, PartialEq, Message)]
pub struct V1LayerParameter {
    #[prost(string, optional, tag = "4")]
    pub name: Option<String>,
    #[prost(int32, optional, tag = "5")]
    pub r#type: Option<i32>,
    #[prost(message, repeated, tag = "6")]
    pub blobs: Vec<BlobProto>,
}

/// `message NetParameter` (name = 1, layers = 2 (V1), layer = 100).
#[derive(Clone, PartialEq, Message)]
pub struct NetParameter {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub layers: Vec<V1LayerParameter>,
    #[prost(message, repeated, tag = "100")]
    pub layer: Vec<LayerParameter>,
}

/// A blob's shape: `shape.dim`, else the legacy four dimensions.
pub fn blob_shape(b: &BlobProto) -> Vec<usize> {
    match &b.shape {
        Some(s) => s.dim.iter().map(|&d| d.max(0) as usize).collect(),
        None => [b.num, b.channels, b.height, b.width]
            .iter()
            .map(|d| d.unwrap_or(0).max(0) as usize)
            .collect(),
    }
}

/// A blob's values as f32 (Caffe writes `data`, or `double_data` for double nets).
fn blob_values(b: &BlobProto) -> Vec<f32> {
    if b.data.is_empty() {
        b.double_data.iter().map(|&v| v as f32).collect()
    } else {
        b.data.clone()
    }
}

/// Every layer's learned blobs by layer name: (shape, values) per blob.
pub type Blobs = BTreeMap<String, Vec<(Vec<usize>, Vec<f32>)>>;

/// Reads a `.caffemodel`, whichever of the two layer lists it uses.
pub fn read_caffemodel(path: &Path) -> Result<Blobs> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let net = NetParameter::decode(bytes.as_slice()).map_err(|e| {
        Error::data(
            path,
            format!("not a Caffe NetParameter protobuf (truncated or another format?): {e}"),
        )
    })?;
    let named = |name: &Option<String>, blobs: &[BlobProto]| {
        let blobs = blobs
            .iter()
            .map(|b| (blob_shape(b), blob_values(b)))
            .collect();
        (name.clone().unwrap_or_default(), blobs)
    };
    let mut out = Blobs::new();
    for l in &net.layer {
        let (name, blobs) = named(&l.name, &l.blobs);
        out.insert(name, blobs);
    }
    for l in &net.layers {
        let (name, blobs) = named(&l.name, &l.blobs);
        out.insert(name, blobs);
    }
    if out.values().all(|b| b.is_empty()) {
        return Err(Error::data(
            path,
            "holds no learned blobs: a NetParameter without weights (a .prototxt's net?), or not \
             a .caffemodel",
        ));
    }
    Ok(out)
}

/// A mean image `[3, side, side]` in Caffe's BGR order, from a `.binaryproto` (`BlobProto`,
/// 1x3xSxS) or a `.npy` (3xSxS, or 3 per-channel values spread over `side_for_constant`).
pub fn read_mean_bgr(path: &Path, side_for_constant: usize) -> Result<(Vec<f32>, usize)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (shape, values) = if bytes.starts_with(b"\x93NUMPY") {
        read_npy(&bytes).map_err(|m| Error::data(path, m))?
    } else {
        let b = BlobProto::decode(bytes.as_slice()).map_err(|e| {
            Error::data(
                path,
                format!("neither a .npy nor a Caffe BlobProto (.binaryproto): {e}"),
            )
        })?;
        (blob_shape(&b), blob_values(&b))
    };
    let dims: Vec<usize> = shape.iter().copied().filter(|&d| d != 1).collect();
    match dims.as_slice() {
        [3] => {
            let side = side_for_constant;
            let image = values
                .iter()
                .flat_map(|&v| std::iter::repeat_n(v, side * side))
                .collect();
            Ok((image, side))
        }
        [3, h, w] if h == w && values.len() == 3 * h * w => Ok((values, *h)),
        _ => Err(Error::data(
            path,
            format!(
                "a mean of shape {shape:?}; expected 3xSxS (Caffe's 3x256x256 image) or 3 \
                 per-channel values"
            ),
        )),
    }
}

/// A little-endian float32/float64 C-order `.npy` (format 1.0 to 3.0).
fn read_npy(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
    let major = *bytes.get(6).ok_or("a truncated .npy header")?;
    let (len_bytes, start) = if major == 1 { (2, 10) } else { (4, 12) };
    let len_field = bytes
        .get(8..8 + len_bytes)
        .ok_or("a truncated .npy header")?;
    let header_len = len_field
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    let header = bytes
        .get(start..start + header_len)
        .ok_or("a truncated .npy header")?;
    let header = String::from_utf8_lossy(header);
    let field = |key: &str| {
        let at = header.find(key)? + key.len();
        Some(
            header[at..]
                .trim_start_matches([':', ' ', '\''])
                .to_string(),
        )
    };
    let descr = field("'descr'").ok_or("a .npy header without descr")?;
    if field("'fortran_order'").is_some_and(|f| f.starts_with("True")) {
        return Err("a Fortran-order .npy (save it in C order)".into());
    }
    let shape_text = field("'shape'").ok_or("a .npy header without shape")?;
    let inner = shape_text
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("");
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("a .npy shape entry {s:?}")))
        .collect::<std::result::Result<_, _>>()?;
    let data = &bytes[start + header_len..];
    let count: usize = shape.iter().product();
    let values: Vec<f32> = if descr.starts_with("<f4") {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect()
    } else if descr.starts_with("<f8") {
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect()
    } else {
        return Err(format!(
            "a .npy of dtype {}; expected little-endian float32 or float64",
            descr.split('\'').next().unwrap_or("?")
        ));
    };
    if values.len() != count {
        return Err(format!(
            "a .npy of shape {shape:?} with {} values (truncated?)",
            values.len()
        ));
    }
    Ok((shape, values))
}
