//! Writing GGUF version 3 files (the layout [`crate::reader`] documents): metadata, tensor
//! infos, then each tensor's bytes at a 32-byte aligned offset. Tensor data is streamed: the
//! offsets follow from the types and dims, so the header is written first and each tensor's
//! bytes are asked for in turn.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::dequant::GgmlType;
use crate::error::{io_err, GgufError, Result};
use crate::reader::Value;

pub const ALIGNMENT: u64 = 32;

/// One tensor to write: name, GGUF dims (innermost first) and type.
#[derive(Clone, Debug)]
pub struct OutTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl OutTensor {
    fn bytes(&self, path: &Path) -> Result<u64> {
        let n: u64 = self.dims.iter().product();
        self.ty.bytes_for(n).ok_or_else(|| GgufError::Tensor {
            path: path.to_path_buf(),
            tensor: self.name.clone(),
            msg: format!("{n} values are not whole blocks of {}", self.ty),
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            // An empty array is written as an array of u8 (gguf-py writes empty arrays so too).
            let item = items.first().map(type_id).unwrap_or(0);
            out.extend_from_slice(&item.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Writes `metadata` and `tensors` to `path` (through a `.partial` file renamed at the end);
/// `fill(i, buf)` appends tensor i's bytes in its type to the empty `buf`. Returns the bytes
/// of tensor data written.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[OutTensor],
    mut fill: impl FnMut(usize, &mut Vec<u8>) -> Result<()>,
) -> Result<u64> {
    for (k, v) in metadata {
        if let Value::Array(items) = v {
            if items
                .iter()
                .any(|x| type_id(x) != items.first().map(type_id).unwrap_or(0))
            {
                return Err(GgufError::Metadata {
                    path: path.to_path_buf(),
                    key: k.clone(),
                    msg: "is an array of mixed types; GGUF arrays hold one type".into(),
                });
            }
        }
    }
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut head, k);
        head.extend_from_slice(&type_id(v).to_le_bytes());
        put_value(&mut head, v);
    }
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        put_str(&mut head, &t.name);
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ty.0.to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        let b = t.bytes(path)?;
        sizes.push(b);
        offset += b.div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    while !(head.len() as u64).is_multiple_of(ALIGNMENT) {
        head.push(0);
    }
    let partial = path.with_extension("gguf.partial");
    let f = File::create(&partial).map_err(io_err(&partial))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    w.write_all(&head).map_err(io_err(&partial))?;
    let mut buf = Vec::new();
    let mut total = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        buf.clear();
        fill(i, &mut buf)?;
        if buf.len() as u64 != sizes[i] {
            return Err(GgufError::Tensor {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                msg: format!("{} bytes given, {} expected", buf.len(), sizes[i]),
            });
        }
        let padded = sizes[i].div_ceil(ALIGNMENT) * ALIGNMENT;
        buf.resize(padded as usize, 0);
        w.write_all(&buf).map_err(io_err(&partial))?;
        total += sizes[i];
    }
    w.flush().map_err(io_err(&partial))?;
    drop(w);
    std::fs::rename(&partial, path).map_err(io_err(path))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::GgufFile;

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.gguf");
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("llama.block_count".to_string(), Value::U32(2)),
            ("x.f".to_string(), Value::F32(0.5)),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
            ),
        ];
        let values: Vec<f32> = (0..96).map(|i| (i as f32 - 40.0) * 0.37).collect();
        let tensors = vec![
            OutTensor {
                name: "a".into(),
                dims: vec![3, 5],
                ty: GgmlType::F32,
            },
            OutTensor {
                name: "q".into(),
                dims: vec![32, 3],
                ty: GgmlType::Q8_0,
            },
        ];
        write_gguf(&path, &meta, &tensors, |i, buf| {
            match i {
                0 => (0..15).for_each(|k| buf.extend_from_slice(&(k as f32).to_le_bytes())),
                _ => crate::quantize::quantize(GgmlType::Q8_0, &values, buf).expect("q8_0"),
            }
            Ok(())
        })
        .expect("write");
        let f = GgufFile::open(&path).expect("read back");
        assert_eq!(f.version, 3);
        assert_eq!(f.metadata, meta);
        let a = f.tensor_f32(f.tensor("a").expect("a")).expect("a data");
        assert_eq!(a, (0..15).map(|k| k as f32).collect::<Vec<_>>());
        let q = f.tensor_f32(f.tensor("q").expect("q")).expect("q data");
        for (block, (got, want)) in q.chunks(32).zip(values.chunks(32)).enumerate() {
            let amax = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            // Half a step, plus the scale's rounding to f16 (2^-11 relative) times 127 steps.
            let tol = amax / 127.0 * 0.5 + amax * 2f32.powi(-11);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= tol, "block {block}: {g} vs {w}");
            }
        }
    }
}
