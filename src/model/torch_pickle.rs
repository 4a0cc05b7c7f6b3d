//! A strict pickle interpreter for the `data.pkl` record of a `torch.save` zip: it understands the
//! opcodes CPython's pickler emits at protocols 2–5 and the handful of globals a state dict needs
//! (`collections.OrderedDict`, torch's tensor and parameter rebuild functions, storage classes and
//! dtypes), and nothing else. It never imports or calls anything: a global outside that list is an
//! error that names it, as is every opcode it does not know.
//!
//! The reference is CPython's `Lib/pickle.py` (opcode semantics) and torch's
//! `torch/serialization.py` / `torch/_utils.py` / `torch/_tensor.py` (what `torch.save` writes:
//! tensors reduce to `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[,
//! metadata])`, or `_rebuild_tensor_v3(..., dtype[, metadata])` over an untyped storage for the
//! dtypes that have no typed storage class; storages are persistent ids
//! `('storage', torch.FloatStorage, key, location, numel)`).
//!
//! Objects live in one arena ([`Unpickled::objects`]) and values refer to them by index, so shared
//! objects (the memo) cost nothing to copy, containers filled after they were memoised stay one
//! object, and dropping a deeply nested structure never recurses. Tensors are not materialised
//! here: a [`TensorSpec`] names its storage and view, and `torch_zip` reads the bytes.

use std::collections::HashMap;
use std::fmt;

/// Most dimensions a tensor of a checkpoint may have (PyTorch itself allows 64).
const MAX_DIMS: usize = 64;

/// Why `data.pkl` could not be interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError {
    /// Byte offset in `data.pkl` of the opcode concerned.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data.pkl byte {}: {}", self.offset, self.reason)
    }
}

type Result<T> = std::result::Result<T, PickleError>;

/// Index of an object in [`Unpickled::objects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjId(usize);

/// A pickled value: scalars inline, everything else in the arena.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An int that fits in 64 bits (longer ones are refused).
    Int(i64),
    /// A float.
    Float(f64),
    /// An arena object.
    Obj(ObjId),
}

/// Element types of torch storages and tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `torch.float32`.
    F32,
    /// `torch.float64`.
    F64,
    /// `torch.float16`.
    F16,
    /// `torch.bfloat16`.
    Bf16,
    /// `torch.int64`.
    I64,
    /// `torch.int32`.
    I32,
    /// `torch.int16`.
    I16,
    /// `torch.int8`.
    I8,
    /// `torch.uint8` (also the element of an untyped storage).
    U8,
    /// `torch.bool`.
    Bool,
    /// `torch.complex32` (two f16).
    C32,
    /// `torch.complex64` (two f32).
    C64,
    /// `torch.complex128` (two f64).
    C128,
    /// `torch.float8_e5m2`.
    F8E5M2,
    /// `torch.float8_e4m3fn`.
    F8E4M3Fn,
    /// `torch.float8_e5m2fnuz`.
    F8E5M2Fnuz,
    /// `torch.float8_e4m3fnuz`.
    F8E4M3Fnuz,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 | Dtype::C64 => 8,
            Dtype::F32 | Dtype::I32 | Dtype::C32 => 4,
            Dtype::F16 | Dtype::Bf16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool | Dtype::F8E5M2 | Dtype::F8E4M3Fn | Dtype::F8E5M2Fnuz | Dtype::F8E4M3Fnuz => 1,
            Dtype::C128 => 16,
        }
    }

    /// Bytes of one scalar whose order a big-endian file reverses (complex: each half).
    pub fn swap_unit(self) -> usize {
        match self {
            Dtype::C32 | Dtype::C64 | Dtype::C128 => self.size() / 2,
            _ => self.size(),
        }
    }

    /// The `torch.<name>` of a dtype global (as `torch.float32` pickles).
    fn from_torch_name(name: &str) -> Option<Dtype> {
        Some(match name {
            "float32" | "float" => Dtype::F32,
            "float64" | "double" => Dtype::F64,
            "float16" | "half" => Dtype::F16,
            "bfloat16" => Dtype::Bf16,
            "int64" | "long" => Dtype::I64,
            "int32" | "int" => Dtype::I32,
            "int16" | "short" => Dtype::I16,
            "int8" => Dtype::I8,
            "uint8" => Dtype::U8,
            "bool" => Dtype::Bool,
            "complex32" | "chalf" => Dtype::C32,
            "complex64" | "cfloat" => Dtype::C64,
            "complex128" | "cdouble" => Dtype::C128,
            "float8_e5m2" => Dtype::F8E5M2,
            "float8_e4m3fn" => Dtype::F8E4M3Fn,
            "float8_e5m2fnuz" => Dtype::F8E5M2Fnuz,
            "float8_e4m3fnuz" => Dtype::F8E4M3Fnuz,
            _ => return None,
        })
    }

    /// The legacy typed storage class `torch.<name>` (`torch.FloatStorage`...).
    fn from_storage_class(name: &str) -> Option<Dtype> {
        Some(match name {
            "FloatStorage" => Dtype::F32,
            "DoubleStorage" => Dtype::F64,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::Bf16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            "ComplexFloatStorage" => Dtype::C64,
            "ComplexDoubleStorage" => Dtype::C128,
            _ => return None,
        })
    }
}

/// A storage named by a persistent id: its bytes are the zip record `<prefix>/data/<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Record name under `<prefix>/data/`.
    pub key: String,
    /// Element type (`U8` for an untyped storage).
    pub dtype: Dtype,
    /// Number of elements the pickle claims (bytes for an untyped storage).
    pub numel: u64,
    /// Where it lived when saved (`cpu`, `cuda:0`...); informational.
    pub location: String,
}

/// A tensor as `torch.save` describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The storage (several tensors may name the same one).
    pub storage: StorageRef,
    /// Element type of the tensor (differs from the storage's only over an untyped storage).
    pub dtype: Dtype,
    /// Offset of the first element, in elements of `dtype`.
    pub offset: i64,
    /// Shape.
    pub size: Vec<i64>,
    /// Strides, in elements.
    pub stride: Vec<i64>,
}

/// The globals a state dict may name; anything else is refused at the `GLOBAL` opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor_v3`.
    RebuildTensorV3,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state`.
    RebuildParameterWithState,
    /// `torch._tensor._rebuild_from_type_v2` (a tensor reduced through its Python type).
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter`, as the type of `_rebuild_from_type_v2`.
    TensorType,
    /// A storage class: typed (`torch.FloatStorage`...) or untyped (`None`).
    Storage(Option<Dtype>),
    /// A dtype (`torch.float32`...).
    Dtype(Dtype),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
            ("torch", "Tensor") | ("torch._tensor", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorType,
            ("torch", "UntypedStorage") | ("torch.storage", "UntypedStorage") => Global::Storage(None),
            ("torch", n) if n.ends_with("Storage") => Global::Storage(Some(Dtype::from_storage_class(n)?)),
            ("torch", n) => Global::Dtype(Dtype::from_torch_name(n)?),
            _ => return None,
        })
    }
}

/// An object of the arena.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// `str`.
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `list`.
    List(Vec<Value>),
    /// `dict` or `OrderedDict` (`ordered`), items in insertion order; a repeated key is kept as
    /// written and the last one wins when read (as in Python).
    Dict {
        /// Items in insertion order.
        items: Vec<(Value, Value)>,
        /// Built by `collections.OrderedDict` (may receive `BUILD` state: `_metadata`).
        ordered: bool,
    },
    /// An allowed global, not called.
    Global(Global),
    /// A storage persistent id.
    Storage(StorageRef),
    /// A rebuilt tensor or parameter.
    Tensor(TensorSpec),
}

impl Object {
    /// A short name of the object's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::Str(_) => "str",
            Object::Bytes(_) => "bytes",
            Object::Tuple(_) => "tuple",
            Object::List(_) => "list",
            Object::Dict { ordered: false, .. } => "dict",
            Object::Dict { ordered: true, .. } => "OrderedDict",
            Object::Global(_) => "global",
            Object::Storage(_) => "storage",
            Object::Tensor(_) => "tensor",
        }
    }
}

/// The result of [`unpickle`]: the arena and the root value.
#[derive(Debug)]
pub struct Unpickled {
    /// Every object built.
    pub objects: Vec<Object>,
    /// What `STOP` returned.
    pub root: Value,
}

impl Unpickled {
    /// The object behind `v`, if it is one.
    pub fn object(&self, v: Value) -> Option<&Object> {
        match v {
            Value::Obj(ObjId(i)) => self.objects.get(i),
            _ => None,
        }
    }

    /// A short name of `v`'s type, for error messages.
    pub fn type_name(&self, v: Value) -> &'static str {
        match v {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Obj(_) => self.object(v).map_or("?", Object::type_name),
        }
    }

    /// `v` as a string, if it is one.
    pub fn str(&self, v: Value) -> Option<&str> {
        match self.object(v) {
            Some(Object::Str(s)) => Some(s),
            _ => None,
        }
    }
}

// Opcodes (CPython Lib/pickle.py), only those this interpreter accepts.
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const BINFLOAT: u8 = b'G';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const BINUNICODE: u8 = b'X';
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const EMPTY_LIST: u8 = b']';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const PROTO: u8 = 0x80;
const NEWOBJ: u8 = 0x81;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;

/// The oldest and newest pickle protocols accepted (`torch.save` writes 2 unless told otherwise).
const PROTOCOLS: std::ops::RangeInclusive<u8> = 2..=5;

/// Runs `data` (a whole `data.pkl`) to its `STOP` opcode.
pub fn unpickle(data: &[u8]) -> Result<Unpickled> {
    Machine { data, pos: 0, op_start: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new(), objects: Vec::new() }.run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Object>,
}

impl Machine<'_> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T> {
        Err(PickleError { offset: self.op_start, reason: reason.into() })
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let left = self.data.len() - self.pos;
        if n > left {
            return self.err(format!("opcode needs {n} bytes, {left} remain (truncated?)"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A length field: checked against the bytes that remain before anything is allocated.
    fn len(&mut self, n: u64) -> Result<usize> {
        let left = self.data.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left => Ok(n),
            _ => self.err(format!("length {n} runs past the end ({left} bytes remain)")),
        }
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else { return self.err("GLOBAL name without a newline") };
        let s = match std::str::from_utf8(&rest[..end]) {
            Ok(s) => s.to_owned(),
            Err(_) => return self.err("GLOBAL name is not UTF-8"),
        };
        self.pos += end + 1;
        Ok(s)
    }

    fn alloc(&mut self, o: Object) -> Value {
        self.objects.push(o);
        Value::Obj(ObjId(self.objects.len() - 1))
    }

    fn push_obj(&mut self, o: Object) {
        let v = self.alloc(o);
        self.stack.push(v);
    }

    fn pop(&mut self) -> Result<Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return self.err("stack underflow");
        }
        self.stack.pop().map_or_else(|| self.err("stack underflow"), Ok)
    }

    fn top(&self) -> Result<Value> {
        match self.stack.last() {
            Some(v) if self.stack.len() > self.marks.last().copied().unwrap_or(0) => Ok(*v),
            _ => self.err("stack underflow"),
        }
    }

    /// Pops everything above the topmost mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(m) = self.marks.pop() else { return self.err("no MARK on the stack") };
        Ok(self.stack.split_off(m))
    }

    fn obj(&self, v: Value) -> Result<&Object> {
        match v {
            Value::Obj(ObjId(i)) => match self.objects.get(i) {
                Some(o) => Ok(o),
                None => self.err("dangling object"),
            },
            _ => self.err(format!("expected an object, found {v:?}")),
        }
    }

    fn obj_mut(&mut self, v: Value) -> Result<&mut Object> {
        let at = self.op_start;
        match v {
            Value::Obj(ObjId(i)) if i < self.objects.len() => Ok(&mut self.objects[i]),
            _ => Err(PickleError { offset: at, reason: format!("expected a container, found {v:?}") }),
        }
    }

    fn str_of(&self, v: Value, what: &str) -> Result<String> {
        match self.obj(v) {
            Ok(Object::Str(s)) => Ok(s.clone()),
            _ => self.err(format!("{what} must be a str")),
        }
    }

    fn tuple_of(&self, v: Value, what: &str) -> Result<Vec<Value>> {
        match self.obj(v) {
            Ok(Object::Tuple(t)) => Ok(t.clone()),
            _ => self.err(format!("{what} must be a tuple")),
        }
    }

    fn ints_of(&self, v: Value, what: &str) -> Result<Vec<i64>> {
        // Sizes and strides: checked before they are copied out, so one huge memoised tuple
        // reused by many tensors cannot cost quadratic memory.
        if let Ok(Object::Tuple(t)) = self.obj(v) {
            if t.len() > MAX_DIMS {
                return self.err(format!("{what} has {} dimensions (at most {MAX_DIMS})", t.len()));
            }
        }
        self.tuple_of(v, what)?
            .into_iter()
            .map(|x| match x {
                Value::Int(i) => Ok(i),
                _ => self.err(format!("{what} must hold ints")),
            })
            .collect()
    }

    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top()?;
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<()> {
        match self.memo.get(&idx) {
            Some(v) => {
                self.stack.push(*v);
                Ok(())
            }
            None => self.err(format!("memo entry {idx} was never stored")),
        }
    }

    fn string(&mut self, n: u64) -> Result<()> {
        let n = self.len(n)?;
        let s = match std::str::from_utf8(self.take(n)?) {
            Ok(s) => s.to_owned(),
            Err(_) => return self.err("string is not UTF-8"),
        };
        self.push_obj(Object::Str(s));
        Ok(())
    }

    fn byte_string(&mut self, n: u64) -> Result<()> {
        let n = self.len(n)?;
        let b = self.take(n)?.to_vec();
        self.push_obj(Object::Bytes(b));
        Ok(())
    }

    /// A little-endian two's-complement int of `n` bytes (LONG1 / LONG4); more than 64 bits is
    /// refused (no tensor needs one).
    fn long(&mut self, n: u64) -> Result<()> {
        let n = self.len(n)?;
        if n > 8 {
            return self.err(format!("integer of {n} bytes does not fit in 64 bits"));
        }
        let b = self.take(n)?;
        let mut v: i64 = 0;
        for (i, &byte) in b.iter().enumerate() {
            v |= i64::from(byte) << (8 * i);
        }
        if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
            v -= 1i64 << (8 * n);
        }
        self.stack.push(Value::Int(v));
        Ok(())
    }

    fn set_items(&mut self, dict: Value, kv: Vec<Value>) -> Result<()> {
        if kv.len() % 2 != 0 {
            return self.err("SETITEMS with an odd number of items");
        }
        let at = self.op_start;
        match self.obj_mut(dict)? {
            Object::Dict { items, .. } => {
                items.extend(kv.chunks_exact(2).map(|c| (c[0], c[1])));
                Ok(())
            }
            o => Err(PickleError { offset: at, reason: format!("SETITEM on a {}", o.type_name()) }),
        }
    }

    fn append(&mut self, list: Value, new: Vec<Value>) -> Result<()> {
        let at = self.op_start;
        match self.obj_mut(list)? {
            Object::List(items) => {
                items.extend(new);
                Ok(())
            }
            o => Err(PickleError { offset: at, reason: format!("APPEND on a {}", o.type_name()) }),
        }
    }

    fn run(mut self) -> Result<Unpickled> {
        loop {
            self.op_start = self.pos;
            let [op] = self.bytes::<1>().map_err(|_| PickleError { offset: self.pos, reason: "ends before STOP (truncated?)".into() })?;
            match op {
                PROTO => {
                    let [v] = self.bytes::<1>()?;
                    if !PROTOCOLS.contains(&v) {
                        return self.err(format!("pickle protocol {v} (torch.save writes {}–{})", PROTOCOLS.start(), PROTOCOLS.end()));
                    }
                }
                FRAME => {
                    let n = u64::from_le_bytes(self.bytes()?);
                    self.len(n)?;
                }
                STOP => {
                    let root = self.pop()?;
                    return Ok(Unpickled { objects: self.objects, root });
                }
                MARK => self.marks.push(self.stack.len()),
                POP => {
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.pop_mark()?;
                    } else {
                        self.pop()?;
                    }
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                DUP => {
                    let v = self.top()?;
                    self.stack.push(v);
                }
                NONE => self.stack.push(Value::None),
                NEWTRUE => self.stack.push(Value::Bool(true)),
                NEWFALSE => self.stack.push(Value::Bool(false)),
                BININT => {
                    let v = i32::from_le_bytes(self.bytes()?);
                    self.stack.push(Value::Int(v.into()));
                }
                BININT1 => {
                    let [v] = self.bytes::<1>()?;
                    self.stack.push(Value::Int(v.into()));
                }
                BININT2 => {
                    let v = u16::from_le_bytes(self.bytes()?);
                    self.stack.push(Value::Int(v.into()));
                }
                LONG1 => {
                    let [n] = self.bytes::<1>()?;
                    self.long(n.into())?;
                }
                LONG4 => {
                    let n = u32::from_le_bytes(self.bytes()?);
                    self.long(n.into())?;
                }
                BINFLOAT => {
                    let v = f64::from_be_bytes(self.bytes()?);
                    self.stack.push(Value::Float(v));
                }
                SHORT_BINUNICODE => {
                    let [n] = self.bytes::<1>()?;
                    self.string(n.into())?;
                }
                BINUNICODE => {
                    let n = u32::from_le_bytes(self.bytes()?);
                    self.string(n.into())?;
                }
                BINUNICODE8 => {
                    let n = u64::from_le_bytes(self.bytes()?);
                    self.string(n)?;
                }
                SHORT_BINBYTES => {
                    let [n] = self.bytes::<1>()?;
                    self.byte_string(n.into())?;
                }
                BINBYTES => {
                    let n = u32::from_le_bytes(self.bytes()?);
                    self.byte_string(n.into())?;
                }
                BINBYTES8 => {
                    let n = u64::from_le_bytes(self.bytes()?);
                    self.byte_string(n)?;
                }
                EMPTY_DICT => self.push_obj(Object::Dict { items: Vec::new(), ordered: false }),
                EMPTY_LIST => self.push_obj(Object::List(Vec::new())),
                EMPTY_TUPLE => self.push_obj(Object::Tuple(Vec::new())),
                DICT => {
                    let kv = self.pop_mark()?;
                    let d = self.alloc(Object::Dict { items: Vec::new(), ordered: false });
                    self.set_items(d, kv)?;
                    self.stack.push(d);
                }
                LIST => {
                    let items = self.pop_mark()?;
                    self.push_obj(Object::List(items));
                }
                TUPLE => {
                    let items = self.pop_mark()?;
                    self.push_obj(Object::Tuple(items));
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = usize::from(op - TUPLE1 + 1);
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return self.err("stack underflow");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_obj(Object::Tuple(items));
                }
                SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![k, v])?;
                }
                SETITEMS => {
                    let kv = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, kv)?;
                }
                APPEND => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, vec![v])?;
                }
                APPENDS => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, items)?;
                }
                BINPUT => {
                    let [i] = self.bytes::<1>()?;
                    self.memo_put(i.into())?;
                }
                LONG_BINPUT => {
                    let i = u32::from_le_bytes(self.bytes()?);
                    self.memo_put(i)?;
                }
                MEMOIZE => {
                    let i = u32::try_from(self.memo.len()).map_or_else(|_| self.err("memo is full"), Ok)?;
                    self.memo_put(i)?;
                }
                BINGET => {
                    let [i] = self.bytes::<1>()?;
                    self.memo_get(i.into())?;
                }
                LONG_BINGET => {
                    let i = u32::from_le_bytes(self.bytes()?);
                    self.memo_get(i)?;
                }
                GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (module, name) = (self.str_of(module, "STACK_GLOBAL module")?, self.str_of(name, "STACK_GLOBAL name")?);
                    self.global(&module, &name)?;
                }
                BINPERSID => {
                    let pid = self.pop()?;
                    let s = self.storage(pid)?;
                    self.push_obj(Object::Storage(s));
                }
                REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.stack.push(v);
                }
                NEWOBJ => {
                    // `cls.__new__(cls, *args)`: of the allowed globals only OrderedDict is a class.
                    let args = self.pop()?;
                    let class = self.pop()?;
                    if !matches!(self.obj(class)?, Object::Global(Global::OrderedDict)) {
                        return self.err("NEWOBJ of a class other than OrderedDict");
                    }
                    let v = self.call(class, args)?;
                    self.stack.push(v);
                }
                BUILD => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.build(target, state)?;
                }
                other => return self.err(format!("unsupported pickle opcode 0x{other:02x} (not one torch.save writes)")),
            }
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::resolve(module, name) {
            Some(g) => {
                self.push_obj(Object::Global(g));
                Ok(())
            }
            None => self.err(format!(
                "the checkpoint names the Python global {module}.{name}, which a state dict of tensors does not need (echovault never runs code from a checkpoint)"
            )),
        }
    }

    /// A persistent id: `('storage', storage class, key, location, numel)`.
    fn storage(&self, pid: Value) -> Result<StorageRef> {
        let t = self.tuple_of(pid, "a persistent id")?;
        let [tag, class, key, location, numel] = t.as_slice() else {
            return self.err(format!("persistent id has {} fields, torch.save writes 5", t.len()));
        };
        if self.str_of(*tag, "persistent id tag")? != "storage" {
            return self.err("persistent id is not a 'storage'");
        }
        let dtype = match self.obj(*class)? {
            Object::Global(Global::Storage(d)) => d.unwrap_or(Dtype::U8),
            _ => return self.err("persistent id does not name a storage class"),
        };
        let numel = match *numel {
            Value::Int(n) if n >= 0 => n as u64,
            _ => return self.err("storage size must be a non-negative int"),
        };
        Ok(StorageRef { key: self.str_of(*key, "storage key")?, dtype, numel, location: self.str_of(*location, "storage location")? })
    }

    fn call(&mut self, callable: Value, args: Value) -> Result<Value> {
        let g = match self.obj(callable)? {
            Object::Global(g) => *g,
            o => return self.err(format!("REDUCE on a {}", o.type_name())),
        };
        let args = self.tuple_of(args, "REDUCE arguments")?;
        match g {
            Global::OrderedDict if args.is_empty() => Ok(self.alloc(Object::Dict { items: Vec::new(), ordered: true })),
            Global::OrderedDict => self.err("OrderedDict called with arguments (pickle never writes that)"),
            Global::RebuildTensorV2 => {
                let (spec, rest) = self.tensor_args(&args, None)?;
                self.tensor_metadata(rest)?;
                Ok(self.alloc(Object::Tensor(spec)))
            }
            Global::RebuildTensorV3 => {
                let dtype = match args.get(6).map(|v| self.obj(*v)) {
                    Some(Ok(Object::Global(Global::Dtype(d)))) => *d,
                    _ => return self.err("_rebuild_tensor_v3 without a dtype"),
                };
                let (spec, rest) = self.tensor_args(&args, Some(dtype))?;
                self.tensor_metadata(rest.get(1..).unwrap_or_default())?;
                Ok(self.alloc(Object::Tensor(spec)))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let want = if g == Global::RebuildParameter { 3 } else { 4 };
                if args.len() != want {
                    return self.err(format!("parameter rebuild with {} arguments, expected {want}", args.len()));
                }
                match self.obj(args[0])? {
                    Object::Tensor(_) => Ok(args[0]),
                    o => self.err(format!("parameter data is a {}", o.type_name())),
                }
            }
            Global::RebuildFromTypeV2 => {
                let [func, ty, inner, state] = args.as_slice() else {
                    return self.err("_rebuild_from_type_v2 takes 4 arguments");
                };
                // One level only: the inner function rebuilds the tensor itself (and a chain of
                // these would recurse as deep as the file is long).
                if !matches!(self.obj(*func)?, Object::Global(Global::RebuildTensorV2 | Global::RebuildTensorV3 | Global::RebuildParameter))
                {
                    return self.err("_rebuild_from_type_v2 of a function other than a tensor rebuild");
                }
                if !matches!(self.obj(*ty)?, Object::Global(Global::TensorType)) {
                    return self.err("_rebuild_from_type_v2 of a type other than Tensor or Parameter");
                }
                match *state {
                    Value::None => {}
                    s if matches!(self.obj(s)?, Object::Dict { items, .. } if items.is_empty()) => {}
                    _ => return self.err("tensor carries Python attributes (a subclass?)"),
                }
                self.call(*func, *inner)
            }
            Global::TensorType | Global::Storage(_) | Global::Dtype(_) => self.err(format!("{g:?} is not callable here")),
        }
    }

    /// `(storage, offset, size, stride, requires_grad, backward_hooks, ...)`: the spec and the
    /// arguments after the hooks.
    fn tensor_args<'v>(&self, args: &'v [Value], dtype: Option<Dtype>) -> Result<(TensorSpec, &'v [Value])> {
        if args.len() < 6 {
            return self.err(format!("tensor rebuild with {} arguments, expected at least 6", args.len()));
        }
        let storage = match self.obj(args[0])? {
            Object::Storage(s) => s.clone(),
            o => return self.err(format!("tensor storage is a {}", o.type_name())),
        };
        let Value::Int(offset) = args[1] else { return self.err("storage offset must be an int") };
        let size = self.ints_of(args[2], "tensor size")?;
        let stride = self.ints_of(args[3], "tensor stride")?;
        if !matches!(args[4], Value::Bool(_)) {
            return self.err("requires_grad must be a bool");
        }
        if !matches!(self.obj(args[5])?, Object::Dict { .. }) {
            return self.err("backward hooks must be a dict");
        }
        let dtype = dtype.unwrap_or(storage.dtype);
        Ok((TensorSpec { storage, dtype, offset, size, stride }, &args[6..]))
    }

    /// The optional metadata dict: only `conj` / `neg` bits live there; a set bit would change
    /// the values, so it is refused rather than ignored.
    fn tensor_metadata(&self, rest: &[Value]) -> Result<()> {
        match rest {
            [] => Ok(()),
            [m] => match self.obj(*m)? {
                Object::Dict { items, .. } => {
                    for (k, v) in items {
                        if *v != Value::Bool(false) {
                            let k = self.str_of(*k, "tensor metadata key")?;
                            return self
                                .err(format!("tensor metadata '{k}' is set (a conjugate or negative view); save a resolved tensor"));
                        }
                    }
                    Ok(())
                }
                o => self.err(format!("tensor metadata is a {}", o.type_name())),
            },
            _ => self.err("tensor rebuild with too many arguments"),
        }
    }

    /// `BUILD`: an OrderedDict's instance attributes (`_metadata` of a state dict) are accepted
    /// and ignored; nothing else takes state.
    fn build(&self, target: Value, state: Value) -> Result<()> {
        match self.obj(target)? {
            Object::Dict { ordered: true, .. } => match state {
                Value::None => Ok(()),
                s if matches!(self.obj(s)?, Object::Dict { .. }) => Ok(()),
                _ => self.err("OrderedDict state must be a dict"),
            },
            o => self.err(format!("BUILD on a {}", o.type_name())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-assembled pickles, written the way CPython's pickler writes them.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn proto(v: u8) -> P {
            P(vec![PROTO, v])
        }
        fn op(mut self, op: u8) -> P {
            self.0.push(op);
            self
        }
        fn raw(mut self, b: &[u8]) -> P {
            self.0.extend_from_slice(b);
            self
        }
        fn global(self, module: &str, name: &str) -> P {
            self.op(GLOBAL).raw(module.as_bytes()).raw(b"\n").raw(name.as_bytes()).raw(b"\n")
        }
        fn s(self, s: &str) -> P {
            self.op(BINUNICODE).raw(&(s.len() as u32).to_le_bytes()).raw(s.as_bytes())
        }
        fn short_s(self, s: &str) -> P {
            self.op(SHORT_BINUNICODE).raw(&[s.len() as u8]).raw(s.as_bytes())
        }
        fn int(self, v: i32) -> P {
            match v {
                0..=255 => self.op(BININT1).raw(&[v as u8]),
                256..=65535 => self.op(BININT2).raw(&(v as u16).to_le_bytes()),
                _ => self.op(BININT).raw(&v.to_le_bytes()),
            }
        }
        fn put(self, i: u8) -> P {
            self.op(BINPUT).raw(&[i])
        }
        fn get(self, i: u8) -> P {
            self.op(BINGET).raw(&[i])
        }
        fn ints(self, v: &[i32]) -> P {
            let mut p = if v.len() > 3 { self.op(MARK) } else { self };
            for &x in v {
                p = p.int(x);
            }
            match v.len() {
                0 => p.op(EMPTY_TUPLE),
                1 => p.op(TUPLE1),
                2 => p.op(TUPLE2),
                3 => p.op(TUPLE3),
                _ => p.op(TUPLE),
            }
        }
        /// `_rebuild_tensor_v2(('storage', torch.<class>, key, 'cpu', numel), offset, size, stride,
        /// False, OrderedDict())`, as torch.save writes a tensor at protocol 2.
        fn tensor(self, class: &str, key: &str, numel: i32, offset: i32, size: &[i32], stride: &[i32]) -> P {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(MARK)
                .op(MARK)
                .s("storage")
                .global("torch", class)
                .s(key)
                .s("cpu")
                .int(numel)
                .op(TUPLE)
                .op(BINPERSID)
                .int(offset)
                .ints(size)
                .ints(stride)
                .op(NEWFALSE)
                .global("collections", "OrderedDict")
                .op(EMPTY_TUPLE)
                .op(REDUCE)
                .op(TUPLE)
                .op(REDUCE)
        }
    }

    fn dict_items(u: &Unpickled, v: Value) -> Vec<(String, Value)> {
        match u.object(v) {
            Some(Object::Dict { items, .. }) => items.iter().map(|(k, v)| (u.str(*k).unwrap().to_owned(), *v)).collect(),
            o => panic!("not a dict: {o:?}"),
        }
    }

    fn spec(u: &Unpickled, v: Value) -> TensorSpec {
        match u.object(v) {
            Some(Object::Tensor(t)) => t.clone(),
            o => panic!("not a tensor: {o:?}"),
        }
    }

    /// An OrderedDict state dict with `_metadata`, two tensors sharing storage '0' (the second a
    /// transposed view at an offset), an f16 one, and a memoised global reused with BINGET.
    fn state_dict_p2() -> Vec<u8> {
        P::proto(2)
            .global("collections", "OrderedDict")
            .put(0)
            .op(EMPTY_TUPLE)
            .op(REDUCE)
            .put(1)
            .op(MARK)
            .s("a.weight")
            .tensor("FloatStorage", "0", 20, 0, &[2, 3], &[3, 1])
            .put(2)
            .s("b.weight")
            .tensor("FloatStorage", "0", 20, 8, &[3, 4], &[1, 3])
            .s("c")
            .tensor("HalfStorage", "1", 5, 0, &[5], &[1])
            .op(SETITEMS)
            // `_metadata` as BUILD state: {'_metadata': OrderedDict({'': {'version': 1}})}
            .op(EMPTY_DICT)
            .s("_metadata")
            .get(0)
            .op(EMPTY_TUPLE)
            .op(REDUCE)
            .s("")
            .op(EMPTY_DICT)
            .s("version")
            .int(1)
            .op(SETITEM)
            .op(SETITEM)
            .op(SETITEM)
            .op(BUILD)
            .op(STOP)
            .0
    }

    #[test]
    fn reads_an_ordered_state_dict_with_metadata_and_shared_storage() {
        let u = unpickle(&state_dict_p2()).unwrap();
        assert_eq!(u.type_name(u.root), "OrderedDict");
        let items = dict_items(&u, u.root);
        assert_eq!(items.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a.weight", "b.weight", "c"]);
        let a = spec(&u, items[0].1);
        let b = spec(&u, items[1].1);
        let c = spec(&u, items[2].1);
        assert_eq!(a.storage, b.storage);
        assert_eq!((a.offset, a.size.as_slice(), a.stride.as_slice()), (0, &[2, 3][..], &[3, 1][..]));
        assert_eq!((b.offset, b.size.as_slice(), b.stride.as_slice()), (8, &[3, 4][..], &[1, 3][..]));
        assert_eq!((b.dtype, b.storage.numel, b.storage.key.as_str()), (Dtype::F32, 20, "0"));
        assert_eq!((c.dtype, c.storage.key.as_str(), c.storage.location.as_str()), (Dtype::F16, "1", "cpu"));
    }

    #[test]
    fn protocol_4_framing_memoize_and_stack_global() {
        // {'w': _rebuild_parameter(_rebuild_tensor_v3(untyped storage, ..., torch.float8_e4m3fn),
        //  False, OrderedDict())} in a frame, with MEMOIZE and STACK_GLOBAL as protocol 4 writes.
        let body = P::default()
            .op(EMPTY_DICT)
            .op(MEMOIZE)
            .short_s("w")
            .op(MEMOIZE)
            .short_s("torch._utils")
            .short_s("_rebuild_parameter")
            .op(STACK_GLOBAL)
            .op(MEMOIZE)
            .short_s("torch._utils")
            .short_s("_rebuild_tensor_v3")
            .op(STACK_GLOBAL)
            .op(MARK)
            .op(MARK)
            .short_s("storage")
            .short_s("torch")
            .short_s("UntypedStorage")
            .op(STACK_GLOBAL)
            .short_s("0")
            .short_s("cuda:0")
            .int(6)
            .op(TUPLE)
            .op(BINPERSID)
            .int(1)
            .ints(&[5])
            .ints(&[1])
            .op(NEWFALSE)
            .short_s("collections")
            .short_s("OrderedDict")
            .op(STACK_GLOBAL)
            .op(MEMOIZE)
            .op(EMPTY_TUPLE)
            .op(REDUCE)
            .short_s("torch")
            .short_s("float8_e4m3fn")
            .op(STACK_GLOBAL)
            .op(TUPLE)
            .op(REDUCE)
            .op(NEWTRUE)
            .op(LONG_BINGET)
            .raw(&3u32.to_le_bytes())
            .op(EMPTY_TUPLE)
            .op(REDUCE)
            .op(TUPLE3)
            .op(REDUCE)
            .op(SETITEM)
            .op(STOP)
            .0;
        let data = P::proto(4).op(FRAME).raw(&(body.len() as u64).to_le_bytes()).raw(&body).0;
        let u = unpickle(&data).unwrap();
        let items = dict_items(&u, u.root);
        let w = spec(&u, items[0].1);
        assert_eq!((w.dtype, w.storage.dtype, w.storage.numel, w.offset), (Dtype::F8E4M3Fn, Dtype::U8, 6, 1));
        assert_eq!(w.storage.location, "cuda:0");
    }

    #[test]
    fn integers_and_floats_decode_as_python_does() {
        let data = P::proto(2)
            .op(MARK)
            .op(LONG1)
            .raw(&[2, 0x00, 0x80]) // -32768
            .op(LONG1)
            .raw(&[5, 0, 0, 0, 0, 1]) // 2^32
            .op(LONG1)
            .raw(&[0])
            .op(BININT)
            .raw(&(-7i32).to_le_bytes())
            .op(BINFLOAT)
            .raw(&1.5f64.to_be_bytes())
            .op(NONE)
            .op(LIST)
            .op(STOP)
            .0;
        let u = unpickle(&data).unwrap();
        let Some(Object::List(l)) = u.object(u.root) else { panic!() };
        assert_eq!(l, &[Value::Int(-32768), Value::Int(1 << 32), Value::Int(0), Value::Int(-7), Value::Float(1.5), Value::None]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let data = state_dict_p2();
        for n in 0..data.len() {
            let e = unpickle(&data[..n]).unwrap_err();
            assert!(e.offset <= n, "{e}");
        }
        // Every single-byte corruption: an error or a value, never a panic.
        for i in 0..data.len() {
            for b in [0x00, 0x2e, 0x71, 0x80, 0xff] {
                let mut d = data.clone();
                d[i] = b;
                let _ = unpickle(&d);
            }
        }
    }

    #[test]
    fn unknown_globals_are_named_and_never_called() {
        let data = P::proto(2).global("os", "system").s("echo hi").op(TUPLE1).op(REDUCE).op(STOP).0;
        let e = unpickle(&data).unwrap_err().to_string();
        assert!(e.contains("os.system"), "{e}");
        let data = P::proto(2).global("torch", "load").op(STOP).0;
        assert!(unpickle(&data).unwrap_err().to_string().contains("torch.load"));
        let data = P::proto(2).global("torch", "QInt8Storage").op(STOP).0;
        assert!(unpickle(&data).unwrap_err().to_string().contains("torch.QInt8Storage"));
    }

    #[test]
    fn malformed_programs_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (P::proto(1).op(NONE).op(STOP).0, "protocol 1"),
            (P::proto(2).op(b'I').raw(b"1\n").op(STOP).0, "opcode 0x49"),
            (P::proto(2).op(STOP).0, "underflow"),
            (P::proto(2).get(3).op(STOP).0, "memo entry 3"),
            (P::proto(2).op(TUPLE).op(STOP).0, "no MARK"),
            (P::proto(2).op(MARK).op(TUPLE1).op(STOP).0, "underflow"),
            (P::proto(2).op(BINUNICODE).raw(&u32::MAX.to_le_bytes()).op(STOP).0, "length 4294967295"),
            (P::proto(2).op(BINUNICODE8).raw(&u64::MAX.to_le_bytes()).0, "length 18446744073709551615"),
            (P::proto(2).op(SHORT_BINUNICODE).raw(&[2, 0xff, 0xfe]).op(STOP).0, "UTF-8"),
            (P::proto(2).op(LONG1).raw(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 1]).op(STOP).0, "64 bits"),
            (P::proto(2).op(EMPTY_LIST).int(1).int(2).op(SETITEM).op(STOP).0, "SETITEM on a list"),
            (P::proto(2).op(EMPTY_DICT).op(MARK).int(1).op(SETITEMS).op(STOP).0, "odd number"),
            (P::proto(2).op(EMPTY_DICT).op(EMPTY_DICT).op(BUILD).op(STOP).0, "BUILD on a dict"),
            (P::proto(2).int(3).op(EMPTY_TUPLE).op(REDUCE).op(STOP).0, "expected an object"),
            (P::proto(2).global("collections", "OrderedDict").int(1).op(TUPLE1).op(REDUCE).op(STOP).0, "with arguments"),
            (P::proto(2).s("x").op(BINPERSID).op(STOP).0, "persistent id must be a tuple"),
            (P::proto(2).tensor("FloatStorage", "0", 4, 0, &[2, 2], &[2]).op(STOP).0, ""),
            (
                P::proto(2)
                    .op(MARK)
                    .s("storage")
                    .global("torch", "FloatStorage")
                    .s("0")
                    .s("cpu")
                    .int(-1)
                    .op(TUPLE)
                    .op(BINPERSID)
                    .op(STOP)
                    .0,
                "non-negative",
            ),
            (P::proto(2).global("torch._utils", "_rebuild_tensor_v2").op(EMPTY_TUPLE).op(NEWOBJ).op(STOP).0, "NEWOBJ"),
        ];
        for (data, want) in cases {
            match unpickle(&data) {
                Err(e) => assert!(e.to_string().contains(want), "{e} should mention {want:?}"),
                Ok(u) if want.is_empty() => {
                    // A size/stride length mismatch is legal pickle; torch_zip refuses it.
                    let t = spec(&u, u.root);
                    assert_ne!(t.size.len(), t.stride.len());
                }
                Ok(u) => panic!("{:?} should fail with {want:?}", u.root),
            }
        }
    }

    #[test]
    fn set_conjugate_or_negative_bits_are_refused() {
        let data = P::proto(2)
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(MARK)
            .op(MARK)
            .s("storage")
            .global("torch", "FloatStorage")
            .s("0")
            .s("cpu")
            .int(1)
            .op(TUPLE)
            .op(BINPERSID)
            .int(0)
            .ints(&[1])
            .ints(&[1])
            .op(NEWFALSE)
            .op(EMPTY_DICT)
            .op(EMPTY_DICT)
            .s("neg")
            .op(NEWTRUE)
            .op(SETITEM)
            .op(TUPLE)
            .op(REDUCE)
            .op(STOP)
            .0;
        assert!(unpickle(&data).unwrap_err().to_string().contains("'neg' is set"));
    }
}
