//! Reads the state dict out of a `torch.save` file (the zip format torch writes since 1.6), the
//! way `torch.load(weights_only=True)` does, without running Python or trusting the file.
//!
//! The format (torch `serialization.py::_save` and `caffe2/serialize/inline_container.cc`): a zip
//! of uncompressed records under one directory `<prefix>/` — `archive` when torch wrote to a
//! stream, else the saved file's own name (`open_clip_pytorch_model.bin.tmp` → prefix
//! `open_clip_pytorch_model.bin`), so it is found, not assumed:
//! - `<prefix>/data.pkl`: the pickled object (see [`super::torch_pickle`]). A state dict is a
//!   `dict` or an `OrderedDict` (whose `_metadata` attribute is ignored); every tensor in it is
//!   `(storage, offset, size, stride)`, and several tensors may view one storage.
//! - `<prefix>/data/<key>`: the raw bytes of storage `key`, `numel × element size` of them.
//! - `<prefix>/byteorder`: `little` or `big` (absent before torch 2.1: little).
//! - `.format_version`, `.storage_alignment`, `version`, `.data/serialization_id`: not needed.
//!
//! Each tensor comes out contiguous, on the CPU, in the dtype it was saved in: its storage is
//! read once, checked against the bytes the pickle claims, and the view is copied out of it
//! (`as_strided` then a contiguous copy) unless it is the whole storage already. A training
//! wrapper (`{"state_dict": ...}` or `{"model": ...}`) is unwrapped; `module.` prefixes are left
//! to the caller ([`super::weights`]).

use crate::error::Error;
use crate::model::torch_pickle::{self, Dtype, Object, TensorSpec, Unpickled, Value};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// How many times a view may repeat its storage's elements when it is copied out.
const MAX_EXPANSION: i64 = 64;

/// Keys of training-checkpoint wrappers whose dict value is the state dict, in order of trust.
const WRAPPER_KEYS: [&str; 2] = ["state_dict", "model"];

/// The error for `path`, naming the file and what is wrong with it.
fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Model {
        dir: path.parent().unwrap_or(path).to_owned(),
        reason: format!("cannot read {}: {what} (expected a state dict saved with torch.save, or safetensors)", path.display()),
    }
}

/// Every tensor of the state dict in the `torch.save` file `path`, in the file's order:
/// contiguous, on the CPU, each in the dtype it was saved in.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(file).map_err(|e| not_a_zip(path, e))?;
    let prefix = find_prefix(path, &zip)?;
    let big_endian = match read_record(&mut zip, &format!("{prefix}/byteorder"), file_len, None) {
        Ok(b) => match b.as_slice() {
            b"little" => false,
            b"big" => true,
            other => return Err(bad(path, format!("byteorder record says {:?}", String::from_utf8_lossy(other)))),
        },
        Err(RecordError::Missing) => false,
        Err(e) => return Err(e.into_error(path)),
    };
    let pickle = read_record(&mut zip, &format!("{prefix}/data.pkl"), file_len, None).map_err(|e| e.into_error(path))?;
    let un = torch_pickle::unpickle(&pickle).map_err(|e| bad(path, e))?;
    let entries = state_dict_entries(path, &un)?;
    let mut storages = Storages { path, prefix: &prefix, zip: &mut zip, file_len, big_endian, read: HashMap::new() };
    let mut out = Vec::with_capacity(entries.len());
    for (key, spec) in entries {
        let t = storages.tensor(&key, spec)?;
        out.push((key, t));
    }
    Ok(out)
}

/// Why `path` is not a zip: a legacy `torch.save` stream (a bare pickle) is told apart.
fn not_a_zip(path: &Path, e: zip::result::ZipError) -> Error {
    let mut head = [0u8; 2];
    let legacy = File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head[0] == 0x80 && head[1] <= 5;
    if legacy {
        return bad(path, "a legacy torch.save file (torch < 1.6, or _use_new_zipfile_serialization=False); load it and save it again with a current torch");
    }
    bad(path, format!("not a torch.save zip archive ({e})"))
}

/// The directory holding `data.pkl`: the only top-level directory that has one.
fn find_prefix(path: &Path, zip: &zip::ZipArchive<File>) -> Result<String, Error> {
    let mut found = zip.file_names().filter_map(|n| n.strip_suffix("/data.pkl")).filter(|p| !p.is_empty() && !p.contains('/'));
    match (found.next(), found.next()) {
        (Some(p), None) => Ok(p.to_owned()),
        (None, _) => Err(bad(path, "the zip has no <name>/data.pkl record (not written by torch.save?)")),
        (Some(a), Some(b)) => Err(bad(path, format!("the zip holds two pickles ({a}/data.pkl, {b}/data.pkl)"))),
    }
}

enum RecordError {
    Missing,
    Bad(String),
}

impl RecordError {
    fn into_error(self, path: &Path) -> Error {
        match self {
            RecordError::Missing => bad(path, "a record is missing"),
            RecordError::Bad(s) => bad(path, s),
        }
    }
}

/// The bytes of record `name`: its size checked against what the file can hold (and against
/// `expected`, when the pickle says how long it must be) before anything is allocated.
fn read_record(zip: &mut zip::ZipArchive<File>, name: &str, file_len: u64, expected: Option<u64>) -> Result<Vec<u8>, RecordError> {
    let mut f = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Err(RecordError::Missing),
        Err(e) => return Err(RecordError::Bad(format!("record {name}: {e}"))),
    };
    let size = f.size();
    if let Some(want) = expected {
        if size != want {
            return Err(RecordError::Bad(format!(
                "record {name} holds {size} bytes, the pickle says {want} (truncated or mismatched file?)"
            )));
        }
    }
    let stored = f.compression() == zip::CompressionMethod::Stored;
    if f.compressed_size() > file_len || (stored && size > file_len) {
        return Err(RecordError::Bad(format!("record {name} claims {size} bytes, the file has {file_len} (truncated?)")));
    }
    // Deflate inflates at most ≈ 1032-fold: a record claiming more is lying (a zip bomb).
    if !stored && size > f.compressed_size().saturating_mul(1032).max(1024) {
        return Err(RecordError::Bad(format!(
            "record {name} claims {size} bytes from {} compressed ones, more than deflate can give",
            f.compressed_size()
        )));
    }
    // Only a stored record's size is bounded by the file; a compressed one grows as it inflates.
    let mut buf = if stored { Vec::with_capacity(size as usize) } else { Vec::new() };
    f.by_ref().take(size.saturating_add(1)).read_to_end(&mut buf).map_err(|e| {
        let hint = if e.to_string().contains("checksum") {
            " (a garbled file, or one saved under torch.serialization.set_crc32_options(False))"
        } else {
            ""
        };
        RecordError::Bad(format!("record {name}: {e}{hint}"))
    })?;
    if buf.len() as u64 != size {
        return Err(RecordError::Bad(format!("record {name} claims {size} bytes, {} could be read (truncated?)", buf.len())));
    }
    Ok(buf)
}

/// The `(key, tensor)` items of the state dict: the pickled dict itself, or the dict under a
/// training wrapper's `state_dict` / `model` key. A repeated key keeps its first place and its
/// last value, as a Python dict would.
fn state_dict_entries(path: &Path, un: &Unpickled) -> Result<Vec<(String, TensorSpec)>, Error> {
    let items = |v: Value| match un.object(v) {
        Some(Object::Dict { items, .. }) => Some(items),
        _ => None,
    };
    let Some(mut dict) = items(un.root) else {
        return Err(bad(path, format!("the pickled object is a {}, not a dict of tensors", un.type_name(un.root))));
    };
    if let Some(inner) =
        WRAPPER_KEYS.iter().find_map(|w| dict.iter().rev().find(|(k, _)| un.str(*k) == Some(w)).and_then(|(_, v)| items(*v)))
    {
        dict = inner;
    }
    let mut order: HashMap<String, usize> = HashMap::with_capacity(dict.len());
    let mut out: Vec<(String, TensorSpec)> = Vec::with_capacity(dict.len());
    for (k, v) in dict {
        let Some(key) = un.str(*k) else {
            return Err(bad(path, format!("a state-dict key is a {}, not a str", un.type_name(*k))));
        };
        let spec = match un.object(*v) {
            Some(Object::Tensor(t)) => t.clone(),
            _ => return Err(bad(path, format!("state-dict entry '{key}' holds a value of type {}, not a tensor", un.type_name(*v)))),
        };
        match order.get(key) {
            Some(&i) => out[i].1 = spec,
            None => {
                order.insert(key.to_owned(), out.len());
                out.push((key.to_owned(), spec));
            }
        }
    }
    Ok(out)
}

/// The tch kind of a torch dtype.
fn kind(d: Dtype) -> Kind {
    match d {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::Bf16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::Bool => Kind::Bool,
        Dtype::C32 => Kind::ComplexHalf,
        Dtype::C64 => Kind::ComplexFloat,
        Dtype::C128 => Kind::ComplexDouble,
        Dtype::F8E5M2 => Kind::Float8e5m2,
        Dtype::F8E4M3Fn => Kind::Float8e4m3fn,
        Dtype::F8E5M2Fnuz => Kind::Float8e5m2fnuz,
        Dtype::F8E4M3Fnuz => Kind::Float8e4m3fnuz,
    }
}

/// Storages read so far (each once, whatever number of tensors view it), as 1-D tensors.
struct Storages<'a> {
    path: &'a Path,
    prefix: &'a str,
    zip: &'a mut zip::ZipArchive<File>,
    file_len: u64,
    big_endian: bool,
    read: HashMap<String, (Dtype, Tensor)>,
}

impl Storages<'_> {
    /// Storage `spec.storage` as a 1-D tensor of `spec.dtype` elements.
    fn storage(&mut self, spec: &TensorSpec) -> Result<Tensor, Error> {
        let s = &spec.storage;
        let path = self.path;
        if let Some((d, t)) = self.read.get(&s.key) {
            if *d != spec.dtype {
                return Err(bad(path, format!("storage {} is viewed both as {d:?} and as {:?}", s.key, spec.dtype)));
            }
            return Ok(t.shallow_clone());
        }
        if s.key.is_empty() || s.key.contains('/') {
            return Err(bad(path, format!("storage key {:?} is not a record name", s.key)));
        }
        let name = format!("{}/data/{}", self.prefix, s.key);
        let nbytes = s.numel.checked_mul(s.dtype.size() as u64).filter(|&n| n <= self.file_len).ok_or_else(|| {
            bad(path, format!("storage {} claims {} elements of {} bytes, more than the file holds", s.key, s.numel, s.dtype.size()))
        })?;
        let mut bytes = read_record(self.zip, &name, self.file_len, Some(nbytes)).map_err(|e| match e {
            RecordError::Missing => bad(path, format!("storage record {name} is missing")),
            e => e.into_error(path),
        })?;
        let elem = spec.dtype.size();
        if bytes.len() % elem != 0 {
            return Err(bad(
                path,
                format!("storage {} holds {} bytes, not a whole number of {:?} elements", s.key, bytes.len(), spec.dtype),
            ));
        }
        if self.big_endian {
            let unit = spec.dtype.swap_unit();
            bytes.chunks_exact_mut(unit).for_each(<[u8]>::reverse);
        }
        let n = (bytes.len() / elem) as i64;
        // `from_data_size` copies `n × element size` bytes: exactly `bytes.len()`, checked above.
        let t = Tensor::f_from_data_size(&bytes, &[n], kind(spec.dtype)).map_err(|e| bad(path, format!("storage {}: {e}", s.key)))?;
        self.read.insert(s.key.clone(), (spec.dtype, t.shallow_clone()));
        Ok(t)
    }

    /// The tensor `key` describes, contiguous; its view checked to lie inside its storage.
    fn tensor(&mut self, key: &str, spec: TensorSpec) -> Result<Tensor, Error> {
        let path = self.path;
        let storage = self.storage(&spec)?;
        let n = storage.size()[0];
        let TensorSpec { size, stride, offset, dtype, .. } = &spec;
        let why = |what: String| bad(path, format!("tensor '{key}': {what}"));
        if size.len() != stride.len() {
            return Err(why(format!("size {size:?} and stride {stride:?} differ in length")));
        }
        if size.iter().chain(stride).any(|&x| x < 0) || *offset < 0 {
            return Err(why(format!("negative size, stride or offset (size {size:?}, stride {stride:?}, offset {offset})")));
        }
        let numel = size.iter().try_fold(1i64, |acc, &x| acc.checked_mul(x)).ok_or_else(|| why(format!("size {size:?} overflows")))?;
        let end = if numel == 0 {
            Some(*offset)
        } else {
            size.iter()
                .zip(stride)
                .try_fold(*offset, |acc, (&sz, &st)| (sz - 1).checked_mul(st).and_then(|x| acc.checked_add(x)))
                .and_then(|last| last.checked_add(1))
        };
        match end {
            Some(end) if end <= n => {}
            _ => {
                return Err(why(format!(
                    "view (offset {offset}, size {size:?}, stride {stride:?}) reaches past its storage {} of {n} {dtype:?} elements",
                    spec.storage.key
                )))
            }
        }
        // A view may repeat its storage's elements (stride 0, overlaps), and copying it out
        // allocates all of them: bounded, so a few bytes of pickle cannot ask for terabytes.
        if numel > n.saturating_mul(MAX_EXPANSION).max(1 << 20) {
            return Err(why(format!(
                "view of {numel} elements expands its storage of {n} more than {MAX_EXPANSION}-fold (not a state dict torch.save writes)"
            )));
        }
        let tch_err = |e: tch::TchError| why(e.to_string());
        let view = storage.f_as_strided(size.as_slice(), stride.as_slice(), *offset).map_err(tch_err)?;
        if *offset == 0 && numel == n && view.is_contiguous() {
            return Ok(view);
        }
        let mut out = Tensor::f_empty(size.as_slice(), (kind(*dtype), Device::Cpu)).map_err(tch_err)?;
        out.f_copy_(&view).map_err(tch_err)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A torch.save-shaped zip with `pickle` and the given storage records.
    fn write_zip(path: &Path, prefix: &str, pickle: &[u8], records: &[(&str, Vec<u8>)]) {
        write_zip_as(path, prefix, pickle, records, "little", zip::CompressionMethod::Stored);
    }

    fn write_zip_as(path: &Path, prefix: &str, pickle: &[u8], records: &[(&str, Vec<u8>)], order: &str, method: zip::CompressionMethod) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::FileOptions::default().compression_method(method);
        z.start_file(format!("{prefix}/data.pkl"), opts).unwrap();
        z.write_all(pickle).unwrap();
        z.start_file(format!("{prefix}/byteorder"), opts).unwrap();
        z.write_all(order.as_bytes()).unwrap();
        for (k, b) in records {
            z.start_file(format!("{prefix}/data/{k}"), opts).unwrap();
            z.write_all(b).unwrap();
        }
        z.finish().unwrap();
    }

    /// `{name: _rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cpu', numel), offset,
    /// size, stride, False, OrderedDict())}` at protocol 2, one or two entries on storage '0'.
    fn pickle(entries: &[(&str, i32, &[i32], &[i32])], numel: i32) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'('];
        let s = |p: &mut Vec<u8>, s: &str| {
            p.push(b'X');
            p.extend_from_slice(&(s.len() as u32).to_le_bytes());
            p.extend_from_slice(s.as_bytes());
        };
        let int = |p: &mut Vec<u8>, v: i32| {
            p.push(b'J');
            p.extend_from_slice(&v.to_le_bytes());
        };
        for (name, offset, size, stride) in entries {
            s(&mut p, name);
            p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
            s(&mut p, "storage");
            p.extend_from_slice(b"ctorch\nFloatStorage\n");
            s(&mut p, "0");
            s(&mut p, "cpu");
            int(&mut p, numel);
            p.extend_from_slice(b"tQ");
            int(&mut p, *offset);
            for v in [size, stride] {
                p.push(b'(');
                v.iter().for_each(|&x| int(&mut p, x));
                p.push(b't');
            }
            p.extend_from_slice(b"\x89ccollections\nOrderedDict\n)RtR");
        }
        p.extend_from_slice(b"u.");
        p
    }

    fn floats(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn views_of_one_storage_come_out_contiguous() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let p = pickle(&[("whole", 0, &[3, 4], &[4, 1]), ("t", 1, &[3, 2], &[1, 4]), ("expand", 5, &[2, 2], &[0, 1])], 12);
        write_zip(&path, "not-archive", &p, &[("0", floats(&data))]);
        let sd = read_state_dict(&path).unwrap();
        let names: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["whole", "t", "expand"]);
        let v = |t: &Tensor| Vec::<f32>::try_from(t.reshape([-1])).unwrap();
        assert_eq!(v(&sd[0].1), data);
        // Rows of t are columns 1..3 of `whole` read from offset 1: [[1,5],[2,6],[3,7]].
        assert_eq!(v(&sd[1].1), [1.0, 5.0, 2.0, 6.0, 3.0, 7.0]);
        assert!(sd[1].1.is_contiguous());
        assert_eq!(v(&sd[2].1), [5.0, 6.0, 5.0, 6.0]);
    }

    #[test]
    fn big_endian_and_deflated_records_are_read() {
        // torch writes stored records in native order; a big-endian machine's file says so in
        // `byteorder`, and a zip tool may have recompressed the records.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        let data = [1.5f32, -2.25, 3.0e-3, 65504.0];
        let be: Vec<u8> = data.iter().flat_map(|x| x.to_be_bytes()).collect();
        let p = pickle(&[("w", 0, &[2, 2], &[2, 1])], 4);
        write_zip_as(&path, "archive", &p, &[("0", be)], "big", zip::CompressionMethod::Deflated);
        let sd = read_state_dict(&path).unwrap();
        assert_eq!(Vec::<f32>::try_from(sd[0].1.reshape([-1])).unwrap(), data);
        write_zip_as(&path, "archive", &p, &[("0", floats(&data))], "middle", zip::CompressionMethod::Stored);
        assert!(read_state_dict(&path).unwrap_err().to_string().contains("byteorder record says \"middle\""));
    }

    #[test]
    fn views_past_their_storage_and_short_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        let data = floats(&[0.0; 6]);
        let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
            (pickle(&[("w", 0, &[2, 4], &[4, 1])], 6), data.clone(), "reaches past its storage"),
            (pickle(&[("w", 5, &[2], &[1])], 6), data.clone(), "reaches past"),
            (pickle(&[("w", 0, &[2, 3], &[3])], 6), data.clone(), "differ in length"),
            (pickle(&[("w", 0, &[2, -3], &[3, 1])], 6), data.clone(), "negative"),
            (pickle(&[("w", 0, &[2, 3], &[3, 1])], 6), floats(&[0.0; 5]), "holds 20 bytes, the pickle says 24"),
            (pickle(&[("w", 0, &[2, 3], &[3, 1])], i32::MAX), data.clone(), "more than the file holds"),
            (pickle(&[("w", 0, &[65536, 65536, 65536, 65536], &[0, 0, 0, 0])], 6), data.clone(), "overflows"),
            // Stride 0 repeating one element 2^24 times: 64 MiB asked for by a few bytes.
            (pickle(&[("w", 0, &[1 << 12, 1 << 12], &[0, 0])], 6), data.clone(), "expands its storage"),
            (pickle(&[("w", 0, &[1; 65], &[1; 65])], 6), data.clone(), "65 dimensions"),
        ];
        for (p, d, want) in cases {
            write_zip(&path, "archive", &p, &[("0", d)]);
            let e = read_state_dict(&path).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("m.bin"), "{e} should mention {want:?}");
        }
        // A storage record that is not there.
        write_zip(&path, "archive", &pickle(&[("w", 0, &[1], &[1])], 1), &[]);
        assert!(read_state_dict(&path).unwrap_err().to_string().contains("archive/data/0 is missing"));
    }

    #[test]
    fn wrappers_are_unwrapped_and_other_values_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        // {"epoch": 3, "state_dict": {"w": tensor}}
        let inner = pickle(&[("w", 0, &[2], &[1])], 2);
        let mut p = vec![0x80, 2, b'}', b'(', b'X', 5, 0, 0, 0];
        p.extend_from_slice(b"epochK\x03X\x0a\0\0\0state_dict");
        p.extend_from_slice(&inner[2..inner.len() - 1]);
        p.extend_from_slice(b"u.");
        write_zip(&path, "archive", &p, &[("0", floats(&[1.0, 2.0]))]);
        let sd = read_state_dict(&path).unwrap();
        assert_eq!(sd.len(), 1);
        assert_eq!(sd[0].0, "w");
        // Without a wrapper, the non-tensor entry is named.
        let p = b"\x80\x02}(X\x05\0\0\0epochK\x03u.".to_vec();
        write_zip(&path, "archive", &p, &[]);
        let e = read_state_dict(&path).unwrap_err().to_string();
        assert!(e.contains("'epoch' holds a value of type int, not a tensor"), "{e}");
    }

    #[test]
    fn not_a_torch_zip_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        std::fs::write(&path, b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.").unwrap(); // legacy magic number
        let e = read_state_dict(&path).unwrap_err().to_string();
        assert!(e.contains("legacy torch.save file") && e.contains("m.bin"), "{e}");
        std::fs::write(&path, b"PK\x03\x04 garbage").unwrap();
        let e = read_state_dict(&path).unwrap_err().to_string();
        assert!(e.contains("not a torch.save zip") && e.contains("m.bin"), "{e}");
        write_zip(&path, "a/b", b"\x80\x02}.", &[]);
        assert!(read_state_dict(&path).unwrap_err().to_string().contains("no <name>/data.pkl"));
    }
}
