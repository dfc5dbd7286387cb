//! Reading a PyTorch state_dict: `torch.save`'s zip archive (`ARCHIVE/data.pkl`, read by the
//! safe [`pickle`] reader, and one file `ARCHIVE/data/KEY` per storage), or the same tensors saved
//! as safetensors. Returns the float32 tensors by their state_dict names.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::pickle::{self, TensorRef, Value};
use crate::error::{Error, Result};

/// A state_dict's float tensors: name -> (shape, values in C order).
pub type StateDict = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads a `.pth` (zip) or `.safetensors` state_dict, telling them apart by their first bytes.
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::data(path, msg);
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(&bytes).map_err(bad)
    } else if bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        Err(bad(
            "PyTorch's legacy (before 1.6) serialisation, which is not read here; re-save it \
             with a current PyTorch: torch.save(torch.load(F), NEW) (zip format) or \
             safetensors.torch.save_file(torch.load(F), NEW)"
                .into(),
        ))
    } else if looks_like_safetensors(&bytes) {
        read_safetensors(&bytes).map_err(bad)
    } else {
        Err(bad(
            "neither a PyTorch checkpoint (a zip archive from torch.save) nor a safetensors file"
                .into(),
        ))
    }
}

/// safetensors: an 8-byte little-endian header length, then a JSON header starting with `{`.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[8] == b'{'
}

fn read_safetensors(bytes: &[u8]) -> std::result::Result<StateDict, String> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a readable safetensors file: {e}"))?;
    let mut out = StateDict::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!(
                "tensor {name} is {:?}; only float32 state_dicts are read (convert with \
                 {{k: v.float() for k, v in sd.items()}})",
                view.dtype()
            ));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        out.insert(name, (view.shape().to_vec(), data));
    }
    Ok(out)
}

fn read_zip(bytes: &[u8]) -> std::result::Result<StateDict, String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("a broken zip archive (truncated?): {e}"))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .map(|n| n.into_owned())
        .ok_or("a zip archive without ARCHIVE/data.pkl: not a torch.save checkpoint")?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    if let Ok(order) = entry(&mut zip, &format!("{prefix}byteorder")) {
        if order != b"little" {
            return Err("tensors stored big-endian; re-save on a little-endian machine".into());
        }
    }
    let root = pickle::load(&entry(&mut zip, &pkl)?).map_err(|e| format!("{pkl}: {e}"))?;
    let Value::Dict(items) = root else {
        return Err("its pickle holds no dict: expected a state_dict (name -> tensor)".into());
    };
    // `torch.save({"state_dict": sd, ...})` is common in training scripts: take the inner one.
    if let Some((_, inner @ Value::Dict(_))) = items
        .iter()
        .find(|(k, _)| *k == Value::Str("state_dict".into()))
    {
        return tensors(&mut zip, &prefix, inner.clone());
    }
    tensors(&mut zip, &prefix, Value::Dict(items))
}

fn tensors<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    prefix: &str,
    dict: Value,
) -> std::result::Result<StateDict, String> {
    let Value::Dict(items) = dict else {
        unreachable!("called with a dict")
    };
    let mut storages: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut out = StateDict::new();
    for (k, v) in items {
        let Value::Str(name) = k else {
            return Err(format!("a state_dict key that is not a string: {k:?}"));
        };
        let t = match v {
            Value::Tensor(t) => t,
            // Integer buffers such as BatchNorm's num_batches_tracked are not ours; refuse
            // other non-tensor entries by name.
            other => return Err(format!("entry {name} is not a tensor ({other:?})")),
        };
        if t.storage.kind != "Float" {
            return Err(format!(
                "tensor {name} is stored as {}; only float32 state_dicts are read (convert with \
                 model.float())",
                t.storage.kind
            ));
        }
        if !storages.contains_key(&t.storage.key) {
            let raw = entry(zip, &format!("{prefix}data/{}", t.storage.key))?;
            if raw.len() != 4 * t.storage.numel {
                return Err(format!(
                    "storage {} of {name} has {} bytes, expected {} (truncated?)",
                    t.storage.key,
                    raw.len(),
                    4 * t.storage.numel
                ));
            }
            let vals = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            storages.insert(t.storage.key.clone(), vals);
        }
        let data = gather(&storages[&t.storage.key], &t).map_err(|e| format!("{name}: {e}"))?;
        out.insert(name, (t.shape, data));
    }
    Ok(out)
}

/// A zip entry's bytes.
fn entry<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
) -> std::result::Result<Vec<u8>, String> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| format!("archive entry {name}: {e}"))?;
    let mut out = Vec::with_capacity(f.size() as usize);
    f.read_to_end(&mut out)
        .map_err(|e| format!("archive entry {name}: {e} (truncated?)"))?;
    Ok(out)
}

/// The tensor's elements in C order from its strided view of `storage`.
fn gather(storage: &[f32], t: &TensorRef) -> std::result::Result<Vec<f32>, String> {
    if t.shape.len() != t.stride.len() {
        return Err("size and stride differ in length".into());
    }
    let len: usize = t.shape.iter().product();
    if len == 0 {
        return Ok(Vec::new());
    }
    let last = t.offset
        + t.shape
            .iter()
            .zip(&t.stride)
            .map(|(&n, &s)| (n - 1) * s)
            .sum::<usize>();
    if last >= storage.len() {
        return Err(format!(
            "its view reaches element {last} of a storage of {}",
            storage.len()
        ));
    }
    let mut out = Vec::with_capacity(len);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..len {
        let at: usize = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.push(storage[at]);
        // Odometer over the shape, last axis fastest.
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::pickle::StorageRef;

    #[test]
    fn gathers_strided_views() {
        let storage: Vec<f32> = (0..12).map(|i| i as f32).collect();
        // The transpose of a 3x4 matrix, offset 0.
        let t = TensorRef {
            storage: StorageRef {
                kind: "Float".into(),
                key: "0".into(),
                numel: 12,
            },
            offset: 0,
            shape: vec![4, 3],
            stride: vec![1, 4],
        };
        assert_eq!(
            gather(&storage, &t).unwrap(),
            [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        let past = TensorRef { offset: 2, ..t };
        assert!(gather(&storage, &past).unwrap_err().contains("reaches"));
    }
}
