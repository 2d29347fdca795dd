//! The GGUF container (versions 2 and 3, little-endian): header, metadata key/values, tensor
//! infos, then the tensor data, aligned to `general.alignment` (32 when absent), memory-mapped.
//!
//! ```text
//! u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//! n_kv x      { string key | u32 value_type | value }
//! n_tensors x { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset }
//! padding to the alignment | tensor data (each tensor at data_start + offset)
//! ```
//! A string is `u64 len | bytes` (UTF-8); an array is `u32 item_type | u64 len | items`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dequant::{dequantize, GgmlType};
use crate::error::{io_err, GgufError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, when it is any number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64).or(match *self {
                Value::I8(v) => Some(v as f64),
                Value::I16(v) => Some(v as f64),
                Value::I32(v) => Some(v as f64),
                Value::I64(v) => Some(v as f64),
                _ => None,
            }),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The shape in PyTorch / safetensors order (the GGUF dims reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A GGUF file, memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    data_start: usize,
    mmap: Mmap,
}

/// A bounds-checked little-endian cursor over the mapped bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: String) -> GgufError {
        GgufError::Format {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.pos,
                self.bytes.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length that must fit in what is left of the file (each item at least `min_item` bytes).
    fn len(&mut self, what: &str, min_item: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item as u64) > left {
            return Err(self.err(format!(
                "{what} is {n}, more than the {left} bytes left at offset {}",
                self.pos
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what, 1)?;
        let at = self.pos;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|e| self.err(format!("{what} at offset {at} is not UTF-8: {e}")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("key `{key}`: bool byte {b} is not 0 or 1"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 0 {
                    return Err(self.err(format!("key `{key}`: nested arrays are not supported")));
                }
                let item = self.u32(key)?;
                let n = self.len(key, 1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => {
                return Err(self.err(format!(
                    "key `{key}` has value type {t}, which GGUF does not define (0..=12)"
                )))
            }
        })
    }
}

impl GgufFile {
    /// Opens and parses `path`; tensor data stays mapped, read only on demand.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: mapped read-only; temper never writes a file it has mapped, and a concurrent
        // external writer is outside what we support.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        Self::parse(path, mmap)
    }

    fn parse(path: &Path, mmap: Mmap) -> Result<Self> {
        let mut c = Cursor {
            bytes: &mmap,
            pos: 0,
            path,
        };
        let magic = c.array::<4>("the magic")?;
        if &magic != MAGIC {
            return Err(c.err(format!(
                "the first bytes are {magic:02x?}, not \"GGUF\" (a big-endian or non-GGUF file?)"
            )));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!(
                "version {version}; temper reads GGUF versions 2 and 3"
            )));
        }
        // Each tensor info is at least 8 + 4 + 4 + 8 bytes, each key/value at least 8 + 4 + 1.
        let n_tensors = c.len("the tensor count", 24)?;
        let n_kv = c.len("the metadata count", 13)?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut index = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string("a metadata key")?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.err(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }
        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(c.err(format!(
                        "general.alignment is {v:?}; it must be a power of two"
                    )))
                }
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("a tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims > 4 {
                return Err(c.err(format!("tensor `{name}` has {n_dims} dims; GGML allows 4")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty = GgmlType(c.u32(&name)?);
            let offset = c.u64(&name)?;
            if offset % alignment != 0 {
                return Err(c.err(format!(
                    "tensor `{name}` starts at data offset {offset}, not a multiple of the alignment {alignment}"
                )));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let data_len = (mmap.len() as u64).saturating_sub(data_start);
        for t in &tensors {
            let n = t
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| c.err(format!("tensor `{}`: dims {:?} overflow", t.name, t.dims)))?;
            // Types whose layout temper does not know are not bounds-checked here; reading
            // them fails later with the type's name.
            if let Some((block_len, _)) = t.ty.block() {
                let bytes = t.ty.bytes_for(n).ok_or_else(|| {
                    c.err(if n.is_multiple_of(block_len as u64) {
                        format!(
                            "tensor `{}` ({}, dims {:?}) would take more than 2^64 bytes: the header is damaged",
                            t.name, t.ty, t.dims
                        )
                    } else {
                        format!(
                            "tensor `{}` ({}, dims {:?}): {n} values are not whole blocks",
                            t.name, t.ty, t.dims
                        )
                    })
                })?;
                if t.offset.checked_add(bytes).is_none_or(|end| end > data_len) {
                    return Err(c.err(format!(
                        "tensor `{}` ({}, dims {:?}) needs bytes {}..{} of the data section, which has {data_len}: the file is truncated",
                        t.name, t.ty, t.dims, t.offset, t.offset.saturating_add(bytes)
                    )));
                }
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            index,
            tensors,
            alignment,
            data_start: data_start as usize,
            mmap,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn meta_err(&self, key: &str, msg: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.path.clone(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    /// A required string key.
    pub fn str(&self, key: &str) -> Result<&str> {
        match self.get(key) {
            None => Err(self.meta_err(key, "is missing")),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.meta_err(key, format!("should be a string, is {v:?}"))),
        }
    }

    /// An optional unsigned integer key (absent -> None; present but not an integer -> error).
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    self.meta_err(key, format!("should be a non-negative integer, is {v:?}"))
                })
            })
            .transpose()
    }

    /// A required unsigned integer key.
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?
            .ok_or_else(|| self.meta_err(key, "is missing"))
    }

    /// An optional number key.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.meta_err(key, format!("should be a number, is {v:?}")))
            })
            .transpose()
    }

    /// An optional bool key.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.meta_err(key, format!("should be a bool, is {v:?}")))
            })
            .transpose()
    }

    /// An optional array of strings.
    pub fn opt_strings(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v
            .as_array()
            .ok_or_else(|| self.meta_err(key, "should be an array of strings"))?;
        arr.iter()
            .map(|x| {
                x.as_str()
                    .ok_or_else(|| self.meta_err(key, format!("holds {x:?}, not a string")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An optional array of integers (of any width; negative values are an error).
    pub fn opt_ints(&self, key: &str) -> Result<Option<Vec<u64>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v
            .as_array()
            .ok_or_else(|| self.meta_err(key, "should be an array of integers"))?;
        arr.iter()
            .map(|x| {
                x.as_u64()
                    .ok_or_else(|| self.meta_err(key, format!("holds {x:?}, not an integer >= 0")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An optional array of numbers (floats or integers of any width, read as f32).
    pub fn opt_floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v
            .as_array()
            .ok_or_else(|| self.meta_err(key, "should be an array of numbers"))?;
        arr.iter()
            .map(|x| {
                x.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| self.meta_err(key, format!("holds {x:?}, not a number")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// The raw bytes of a tensor (bounds were checked at open for known types).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let bytes =
            t.ty.bytes_for(t.n_elements())
                .ok_or_else(|| GgufError::Tensor {
                    path: self.path.clone(),
                    tensor: t.name.clone(),
                    msg: format!(
                        "type {} is not one temper reads (it reads {})",
                        t.ty,
                        GgmlType::SUPPORTED.map(|t| t.name()).join(", ")
                    ),
                })?;
        let start = self.data_start + t.offset as usize;
        Ok(&self.mmap[start..start + bytes as usize])
    }

    /// A tensor dequantised to f32, in its (PyTorch-order) shape's row-major layout.
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(t)?;
        dequantize(t.ty, bytes, t.n_elements() as usize).map_err(|msg| GgufError::Tensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            msg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_bytes(bytes: &[u8]) -> Result<GgufFile> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        GgufFile::open(f.path())
    }

    #[test]
    fn bad_magic_and_truncation_are_named() {
        let e = parse_bytes(b"GGML\x03\0\0\0").err().unwrap().to_string();
        assert!(e.contains("not \"GGUF\""), "{e}");
        let e = parse_bytes(b"GGUF\x03\0\0\0\x01\0")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = parse_bytes(b"GGUF\x01\0\0\0").err().unwrap().to_string();
        assert!(e.contains("version 1"), "{e}");
    }

    #[test]
    fn huge_counts_are_rejected_not_allocated() {
        let mut b = b"GGUF\x03\0\0\0".to_vec();
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let e = parse_bytes(&b).err().unwrap().to_string();
        assert!(e.contains("tensor count"), "{e}");
    }
}
