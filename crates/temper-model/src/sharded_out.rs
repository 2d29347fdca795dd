//! Writing a model's weights as transformers' `save_pretrained` lays them out: tensors in
//! order, grouped into shards of at most `max_shard_bytes` (a tensor larger than that goes in
//! a shard of its own), `model.safetensors` when one shard holds everything, else
//! `model-00001-of-0000N.safetensors` files and `model.safetensors.index.json`.
//!
//! Each file is streamed: its header is written first (every offset follows from the shapes),
//! then each tensor's bytes as the caller produces them, so host memory holds one tensor at a
//! time. Files are written under a `.partial` name and renamed when complete.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use temper_core::DType;

use crate::error::{io_err, ModelError, Result};

pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const SINGLE_FILE: &str = "model.safetensors";

/// One tensor to write: its name, storage type and shape.
#[derive(Clone, Debug)]
pub struct OutTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl OutTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
}

/// One output file and the indices (into the tensor list) of the tensors it holds, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    pub file: String,
    pub members: Vec<usize>,
}

/// Groups `tensors` into shards as huggingface_hub's `split_torch_state_dict_into_shards`
/// does: in order, a new shard when the next tensor would take the current one past
/// `max_shard_bytes`; a tensor larger than the limit alone in its own shard.
pub fn plan_shards(tensors: &[OutTensor], max_shard_bytes: u64) -> Vec<Shard> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let b = t.bytes();
        if b > max_shard_bytes {
            groups.push(vec![i]);
            continue;
        }
        if size + b > max_shard_bytes && !current.is_empty() {
            groups.push(std::mem::take(&mut current));
            size = 0;
        }
        current.push(i);
        size += b;
    }
    if !current.is_empty() || groups.is_empty() {
        groups.push(current);
    }
    let n = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, members)| Shard {
            file: if n == 1 {
                SINGLE_FILE.to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
            },
            members,
        })
        .collect()
}

/// The safetensors name of a storage type.
fn st_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::BF16 => "BF16",
        DType::F16 => "F16",
    }
}

/// What [`write_shards`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    pub parameters: u64,
}

/// Writes `tensors` into `dir` as `shards` say; `fill(i, buf)` appends tensor i's
/// little-endian bytes (exactly `tensors[i].bytes()` of them) to the empty `buf`. Writes the
/// index file when there are several shards.
pub fn write_shards(
    dir: &Path,
    tensors: &[OutTensor],
    shards: &[Shard],
    mut fill: impl FnMut(usize, &mut Vec<u8>) -> Result<()>,
) -> Result<Written> {
    let mut written = Written {
        files: Vec::new(),
        bytes: 0,
        parameters: 0,
    };
    let mut weight_map = BTreeMap::new();
    let mut buf = Vec::new();
    for shard in shards {
        let path = dir.join(&shard.file);
        let partial = dir.join(format!("{}.partial", shard.file));
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut offset = 0u64;
        for &i in &shard.members {
            let t = &tensors[i];
            header.insert(
                t.name.clone(),
                serde_json::json!({
                    "dtype": st_name(t.dtype),
                    "shape": t.shape,
                    "data_offsets": [offset, offset + t.bytes()],
                }),
            );
            offset += t.bytes();
            weight_map.insert(t.name.clone(), shard.file.clone());
        }
        let mut head = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| {
            ModelError::Safetensors {
                path: path.clone(),
                msg: format!("cannot serialise the header: {e}"),
            }
        })?;
        // The data starts 8-aligned, as the safetensors library pads it.
        while head.len() % 8 != 0 {
            head.push(b' ');
        }
        let f = File::create(&partial).map_err(io_err(&partial))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        w.write_all(&(head.len() as u64).to_le_bytes())
            .map_err(io_err(&partial))?;
        w.write_all(&head).map_err(io_err(&partial))?;
        for &i in &shard.members {
            let t = &tensors[i];
            buf.clear();
            fill(i, &mut buf)?;
            if buf.len() as u64 != t.bytes() {
                return Err(ModelError::Shape {
                    name: t.name.clone(),
                    got: vec![buf.len() / t.dtype.size()],
                    expected: vec![t.numel()],
                });
            }
            w.write_all(&buf).map_err(io_err(&partial))?;
            written.parameters += t.numel() as u64;
        }
        w.flush().map_err(io_err(&partial))?;
        drop(w);
        std::fs::rename(&partial, &path).map_err(io_err(&path))?;
        written.bytes += offset;
        written.files.push(path);
    }
    if shards.len() > 1 {
        let index = serde_json::json!({
            "metadata": {"total_parameters": written.parameters, "total_size": written.bytes},
            "weight_map": weight_map,
        });
        let path = dir.join(INDEX_FILE);
        let text = temper_pyjson::dumps_sorted_indent2(&index) + "\n";
        crate::adapter::write_atomic(&path, text.as_bytes())?;
    }
    Ok(written)
}

/// "5GB", "200KB", "4GiB", "1000": a shard size in bytes, as transformers' `max_shard_size`
/// reads it (KB, MB, GB are powers of ten; KiB, MiB, GiB powers of two).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.trim().parse().ok()?;
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024.0 * 1024.0,
        "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    (value.is_finite() && value > 0.0).then_some((value * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, n: usize) -> OutTensor {
        OutTensor {
            name: name.into(),
            dtype: DType::BF16,
            shape: vec![n],
        }
    }

    #[test]
    fn shards_split_as_huggingface_hub_does() {
        // 2-byte values: sizes 20, 30, 60 (over the limit of 50), 40, 10.
        let ts = [t("a", 10), t("b", 15), t("c", 30), t("d", 20), t("e", 5)];
        let plan = plan_shards(&ts, 50);
        let members: Vec<Vec<usize>> = plan.iter().map(|s| s.members.clone()).collect();
        assert_eq!(members, vec![vec![2], vec![0, 1], vec![3, 4]]);
        assert_eq!(plan[0].file, "model-00001-of-00003.safetensors");
        assert_eq!(plan_shards(&ts, 1000)[0].file, "model.safetensors");
    }

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = [t("a", 3), t("b", 5), t("c", 4)];
        let plan = plan_shards(&ts, 16);
        assert_eq!(plan.len(), 2);
        let w = write_shards(dir.path(), &ts, &plan, |i, buf| {
            for k in 0..ts[i].numel() {
                buf.extend_from_slice(&half::bf16::from_f32((i * 10 + k) as f32).to_le_bytes());
            }
            Ok(())
        })
        .expect("write");
        assert_eq!(w.parameters, 12);
        let st = crate::safetensors_dir::SafetensorsDir::open(dir.path()).expect("open");
        for (i, t) in ts.iter().enumerate() {
            let got = st.read(&t.name).expect("read").data;
            let want: Vec<f32> = (0..t.numel()).map(|k| (i * 10 + k) as f32).collect();
            assert_eq!(got, want, "{}", t.name);
        }
        let index: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(INDEX_FILE)).expect("index"),
        )
        .expect("json");
        assert_eq!(index["metadata"]["total_size"], 24);
        assert_eq!(index["weight_map"].as_object().expect("map").len(), 3);
    }

    #[test]
    fn sizes_parse_like_transformers() {
        assert_eq!(parse_size("5GB"), Some(5_000_000_000));
        assert_eq!(parse_size("2KiB"), Some(2048));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("5 parsecs"), None);
        assert_eq!(parse_size("0"), None);
    }
}
