//! The safetensors files of a folder: `model.safetensors`, or the shards named by
//! `model.safetensors.index.json`, each memory-mapped on its own so a caller can hold one
//! shard at a time.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::error::{io_err, QuantError, Result};

pub(crate) const INDEX: &str = "model.safetensors.index.json";
pub(crate) const SINGLE: &str = "model.safetensors";

/// The weight files of `dir`, in name order, and whether they come from an index.
pub fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, bool)> {
    let index_path = dir.join(INDEX);
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(io_err(&index_path))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| QuantError::Json {
                path: index_path.clone(),
                what: "a safetensors index",
                source,
            })?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| QuantError::Folder {
                path: index_path.clone(),
                msg: "has no `weight_map` object".into(),
            })?;
        let mut names: Vec<String> = map
            .values()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        Ok((names.into_iter().map(|n| dir.join(n)).collect(), true))
    } else if dir.join(SINGLE).exists() {
        Ok((vec![dir.join(SINGLE)], false))
    } else {
        Err(QuantError::Folder {
            path: dir.to_path_buf(),
            msg: format!(
                "no {SINGLE} or {INDEX} here; temper reads Hugging Face folders saved with \
                 safe_serialization (safetensors)"
            ),
        })
    }
}

/// One memory-mapped safetensors file.
pub(crate) struct Shard {
    pub path: PathBuf,
    mmap: Mmap,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(io_err(path))?;
        // SAFETY: mapped read-only; temper never writes a file it has mapped, and a concurrent
        // external writer is outside what we support.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
        let shard = Shard {
            path: path.to_path_buf(),
            mmap,
        };
        shard.tensors()?;
        Ok(shard)
    }

    pub fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.mmap).map_err(|e| QuantError::Safetensors {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }
}
