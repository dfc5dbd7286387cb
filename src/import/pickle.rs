//! A safe reader for the pickles inside PyTorch checkpoints (`data.pkl` of `torch.save`'s zip
//! format): the opcodes `torch.save` writes for a state_dict of tensors (protocols 2 to 5), and
//! nothing that runs code. A pickle names Python callables (GLOBAL, STACK_GLOBAL) and calls them
//! (REDUCE, NEWOBJ, BUILD); here only an allow-list of names is accepted, each interpreted as
//! data (an ordered dict, a tensor made from a storage), and any other name is refused with an
//! error naming it.

use std::collections::HashMap;

/// A value on the pickle machine's stack.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Dicts and OrderedDicts, with their keys in insertion order.
    Dict(Vec<(Value, Value)>),
    /// An allow-listed global, e.g. `torch.FloatStorage`.
    Global(Global),
    /// A storage named by a persistent id: `("storage", type, key, location, numel)`.
    Storage(StorageRef),
    Tensor(TensorRef),
    /// The MARK opcode's sentinel.
    Mark,
}

/// The globals a state_dict pickle may name.
#[derive(Clone, Debug, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    /// `torch.<Kind>Storage`, with its element kind ("Float", "Half", ...).
    Storage(String),
}

/// A typed storage in the archive: the file `data/<key>`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    /// "Float", "Double", "Half", "BFloat16", "Long", ...
    pub kind: String,
    pub key: String,
    pub numel: usize,
}

/// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`: a strided view.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// Why a pickle was refused or could not be read.
pub type PickleResult<T> = std::result::Result<T, String>;

/// Reads the pickle in `bytes` and returns the object it builds.
pub fn load(bytes: &[u8]) -> PickleResult<Value> {
    Machine {
        bytes,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> PickleResult<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            format!(
                "truncated: the pickle ends inside an opcode at byte {}",
                self.pos
            )
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> PickleResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> PickleResult<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn line(&mut self) -> PickleResult<String> {
        let rest = &self.bytes[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated: a GLOBAL's name has no end of line")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> PickleResult<Value> {
        let b = self.take(n)?;
        Ok(Value::Str(
            std::str::from_utf8(b)
                .map_err(|_| "a string is not UTF-8")?
                .to_string(),
        ))
    }
    fn pop(&mut self) -> PickleResult<Value> {
        self.stack
            .pop()
            .ok_or_else(|| "stack underflow".to_string())
    }
    fn top(&mut self) -> PickleResult<&mut Value> {
        self.stack
            .last_mut()
            .ok_or_else(|| "stack underflow".to_string())
    }
    /// The values above the topmost MARK, removing them and the mark.
    fn pop_mark(&mut self) -> PickleResult<Vec<Value>> {
        let m = self
            .stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or("no MARK on the stack")?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }
    fn memo_get(&self, i: u32) -> PickleResult<Value> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| format!("memo entry {i} read before it was written"))
    }

    fn run(mut self) -> PickleResult<Value> {
        loop {
            let at = self.pos;
            let op = self
                .u8()
                .map_err(|_| "truncated: the pickle has no STOP".to_string())?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if !(2..=5).contains(&proto) {
                        return Err(format!("pickle protocol {proto} (expected 2 to 5)"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let b = self.take(2)?;
                    let v = u16::from_le_bytes([b[0], b[1]]);
                    self.stack.push(Value::Int(v as i64))
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err("an integer wider than 64 bits".into());
                    }
                    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        0xff
                    } else {
                        0
                    };
                    let mut le = [fill; 8];
                    le[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(le)))
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v)
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v)
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v)
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        other => return Err(format!("APPEND to a {}", type_name(other))),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        other => return Err(format!("APPENDS to a {}", type_name(other))),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    set_items(self.top()?, vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    set_items(self.top()?, items)?
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v)
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(global(&module, &name)?))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL with a non-string name".into());
                    };
                    self.stack.push(Value::Global(global(&module, &name)?))
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(Value::Storage(storage(pid)?))
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    self.stack.push(call(f, args)?)
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(call(cls, args)?)
                }
                b'b' => {
                    // BUILD: set the object's state. A state_dict's OrderedDict carries its
                    // `_metadata` (module versions) this way; it is not needed and dropped.
                    let _state = self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_) | Value::Tensor(_)) {
                        return Err("BUILD on something that is neither a dict nor a tensor".into());
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                other => {
                    return Err(format!(
                        "pickle opcode 0x{other:02x} at byte {at} is not one a state_dict of \
                         tensors uses"
                    ))
                }
            }
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "tuple",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Global(_) => "global",
        Value::Storage(_) => "storage",
        Value::Tensor(_) => "tensor",
        Value::Mark => "mark",
    }
}

fn set_items(target: &mut Value, items: Vec<Value>) -> PickleResult<()> {
    let Value::Dict(d) = target else {
        return Err(format!("SETITEM on a {}", type_name(target)));
    };
    if !items.len().is_multiple_of(2) {
        return Err("SETITEMS with an odd number of values".into());
    }
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match d.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => d.push((k, v)),
        }
    }
    Ok(())
}

/// The allow-list: everything a state_dict of tensors names. Anything else (a pickled module,
/// `builtins.eval`, `os.system`, ...) is refused by name.
fn global(module: &str, name: &str) -> PickleResult<Global> {
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", s) if s.ends_with("Storage") => {
            Ok(Global::Storage(s.trim_end_matches("Storage").to_string()))
        }
        _ => Err(format!(
            "it names the Python object {module}.{name}, which a plain state_dict of tensors \
             does not; refused, since loading it would run code (save model.state_dict() \
             instead of the model)"
        )),
    }
}

/// A persistent id: `("storage", torch.<Kind>Storage, key, location, numel)`.
fn storage(pid: Value) -> PickleResult<StorageRef> {
    let Value::Tuple(t) = pid else {
        return Err("a persistent id that is not a tuple".into());
    };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), _, Value::Int(n)]
            if tag == "storage" && *n >= 0 =>
        {
            Ok(StorageRef {
                kind: kind.clone(),
                key: key.clone(),
                numel: *n as usize,
            })
        }
        _ => Err(format!("an unexpected persistent id {t:?}")),
    }
}

fn usizes(v: &Value, what: &str) -> PickleResult<Vec<usize>> {
    let Value::Tuple(t) = v else {
        return Err(format!("a tensor's {what} is not a tuple"));
    };
    t.iter()
        .map(|x| match x {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            _ => Err(format!("a tensor's {what} holds {x:?}")),
        })
        .collect()
}

/// REDUCE / NEWOBJ of an allow-listed global, as data.
fn call(f: Value, args: Value) -> PickleResult<Value> {
    let Value::Tuple(args) = args else {
        return Err("a call whose arguments are not a tuple".into());
    };
    match f {
        Value::Global(Global::OrderedDict) => Ok(Value::Dict(Vec::new())),
        Value::Global(Global::RebuildTensorV2) => match args.as_slice() {
            [Value::Storage(s), Value::Int(offset), size, stride, ..] if *offset >= 0 => {
                Ok(Value::Tensor(TensorRef {
                    storage: s.clone(),
                    offset: *offset as usize,
                    shape: usizes(size, "size")?,
                    stride: usizes(stride, "stride")?,
                }))
            }
            _ => Err("_rebuild_tensor_v2 with unexpected arguments".into()),
        },
        // A Parameter is its tensor (requires_grad does not matter here).
        Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err("_rebuild_parameter of something that is not a tensor".into()),
        },
        other => Err(format!("a call of a {}", type_name(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_code_by_name() {
        // pickle.dumps of os.system("true"), protocol 2
        let evil = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
        let e = load(evil).unwrap_err();
        assert!(e.contains("posix.system") && e.contains("refused"), "{e}");
        let e = load(b"\x80\x02cbuiltins\neval\n.").unwrap_err();
        assert!(e.contains("builtins.eval"), "{e}");
    }

    #[test]
    fn reads_dicts_ints_and_strings_and_spots_truncation() {
        // pickle.dumps({"a": 1, "b": [2, 300, -5]}, protocol=2)
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(K\x02M,\x01J\xfb\xff\xff\xffeu.";
        let v = load(p).unwrap();
        let want = Value::Dict(vec![
            (Value::Str("a".into()), Value::Int(1)),
            (
                Value::Str("b".into()),
                Value::List(vec![Value::Int(2), Value::Int(300), Value::Int(-5)]),
            ),
        ]);
        assert_eq!(v, want);
        let e = load(&p[..p.len() - 5]).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }
}
