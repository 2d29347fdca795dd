//! Reading tensors from a Hugging Face folder: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped; a tensor is converted to f32 only
//! when asked for.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use temper_core::DType;

use crate::error::{io_err, ModelError, Result};

const INDEX: &str = "model.safetensors.index.json";

/// The safetensors files of one folder, mapped into memory.
pub struct SafetensorsDir {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
}

/// A tensor read to the host in f32.
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl SafetensorsDir {
    /// Opens `model.safetensors`, or the shards of `model.safetensors.index.json`, or, for an
    /// adapter folder, the file name given.
    pub fn open(dir: &Path) -> Result<Self> {
        let (names, _) = temper_quant::weight_files(dir)?;
        Self::open_files(dir, &names)
    }

    /// Opens the given files of a folder.
    pub fn open_files(dir: &Path, paths: &[PathBuf]) -> Result<Self> {
        let mut files: Vec<(PathBuf, Mmap)> = Vec::new();
        let mut index = HashMap::new();
        for path in paths {
            let file = File::open(path).map_err(io_err(path))?;
            // SAFETY: the file is opened read-only; temper never writes model files it has
            // mapped, and a concurrent external writer is outside what we support.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                msg: e.to_string(),
            })?;
            for name in st.names() {
                if let Some(first) = index.insert(name.to_string(), files.len()) {
                    let first: &Path = &files[first].0;
                    return Err(ModelError::Safetensors {
                        path: path.clone(),
                        msg: format!(
                            "tensor `{name}` is also in {}; each tensor must be stored once: \
                             remove the stale copy (and its entry in {INDEX})",
                            first.display()
                        ),
                    });
                }
            }
            files.push((path.clone(), mmap));
        }
        Ok(SafetensorsDir {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The decoder layer indices that tensors are stored for (`model.layers.<i>.`), sorted.
    pub fn layer_indices(&self) -> Vec<usize> {
        let mut layers: Vec<usize> = self
            .index
            .keys()
            .filter_map(|n| n.strip_prefix("model.layers."))
            .filter_map(|rest| rest.split('.').next())
            .filter_map(|i| i.parse().ok())
            .collect();
        layers.sort_unstable();
        layers.dedup();
        layers
    }

    /// The stored tensor `name`, its bytes still in the mapped file, and that file's mapping.
    fn view(&self, name: &str) -> Result<(TensorView<'_>, &Mmap)> {
        let &fi = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                dir: self.dir.clone(),
                name: name.to_string(),
                hint: self.hint(name),
            })?;
        let (path, mmap) = &self.files[fi];
        let st = SafeTensors::deserialize(mmap).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let view = st.tensor(name).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        Ok((view, mmap))
    }

    /// Reads `name`, converting F32 / BF16 / F16 to f32.
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        let (view, mmap) = self.view(name)?;
        let stored = float_dtype(name, view.dtype())?;
        let bytes = view.data();
        self.check_finite(name, bytes, stored)?;
        // Converted in parallel: a 7B model is 6.7e9 values.
        let data = temper_core::dtype::decode_le(bytes, stored);
        // The converted copy is all that is needed now: let the kernel drop the file pages
        // just read, so host memory holds about one tensor at a time, not the whole model.
        release_tensor_pages(mmap, bytes);
        Ok(HostTensor {
            shape: view.shape().to_vec(),
            data,
        })
    }

    /// Reads an I8 tensor `name` of shape `expected` (bitsandbytes' 8-bit codes).
    pub fn read_i8(&self, name: &str, expected: &[usize]) -> Result<Vec<i8>> {
        let (view, mmap) = self.view(name)?;
        if view.dtype() != Dtype::I8 {
            return Err(ModelError::Dtype {
                name: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
                expected: "I8",
            });
        }
        if view.shape() != expected {
            return Err(ModelError::Shape {
                name: name.to_string(),
                got: view.shape().to_vec(),
                expected: expected.to_vec(),
            });
        }
        let codes = view.data().iter().map(|&b| b as i8).collect();
        release_tensor_pages(mmap, view.data());
        Ok(codes)
    }

    /// Reads a U8 tensor `name` as its bytes (bitsandbytes' `weight_format` scalar).
    pub fn read_u8(&self, name: &str) -> Result<Vec<u8>> {
        let (view, _) = self.view(name)?;
        if view.dtype() != Dtype::U8 {
            return Err(ModelError::Dtype {
                name: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
                expected: "U8",
            });
        }
        Ok(view.data().to_vec())
    }

    /// Calls `f` with the bytes of float tensor `name` as the file stores them (little-endian
    /// values of the returned type), after checking its shape; the file pages are released
    /// afterwards, so host memory holds about one tensor at a time.
    pub fn with_stored<T>(
        &self,
        name: &str,
        expected: &[usize],
        f: impl FnOnce(&[u8], DType) -> Result<T>,
    ) -> Result<T> {
        let (view, mmap) = self.view(name)?;
        if view.shape() != expected {
            return Err(ModelError::Shape {
                name: name.to_string(),
                got: view.shape().to_vec(),
                expected: expected.to_vec(),
            });
        }
        let stored = float_dtype(name, view.dtype())?;
        let bytes = view.data();
        self.check_finite(name, bytes, stored)?;
        let out = f(bytes, stored);
        release_tensor_pages(mmap, bytes);
        out
    }

    /// The storage type and shape of tensor `name`, as the file's header gives them.
    pub fn info(&self, name: &str) -> Result<(Dtype, Vec<usize>)> {
        let (view, _) = self.view(name)?;
        Ok((view.dtype(), view.shape().to_vec()))
    }

    /// A fingerprint of the stored weights: every tensor's name, type and shape, and 16
    /// blocks of 4 KiB sampled evenly from each file (cheap even for a 70B model, and any
    /// re-saved or re-quantised copy differs).
    pub fn fingerprint(&self) -> Result<String> {
        let mut h = Fnv::default();
        let mut names: Vec<&str> = self.names().collect();
        names.sort_unstable();
        for name in names {
            let (dtype, shape) = self.info(name)?;
            h.bytes(format!("{name} {dtype:?} {shape:?};").as_bytes());
        }
        for (_, mmap) in &self.files {
            const BLOCK: usize = 4096;
            h.bytes(&(mmap.len() as u64).to_le_bytes());
            for i in 0..16 {
                let at = mmap.len().saturating_sub(BLOCK) / 15 * i;
                h.bytes(&mmap[at..(at + BLOCK).min(mmap.len())]);
            }
        }
        Ok(h.hex())
    }

    /// Tensor `name` as stored (type, shape, bytes still in the mapped file), for readers of
    /// other layouts (bitsandbytes' 4-bit tensors); None when absent or unreadable. Call
    /// [`SafetensorsDir::release`] once its bytes are copied.
    pub fn tensor_ref(&self, name: &str) -> Option<temper_quant::TensorRef<'_>> {
        let (view, _) = self.view(name).ok()?;
        Some(temper_quant::TensorRef {
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data(),
        })
    }

    /// Drops the resident file pages of tensor `name` (after its bytes were copied).
    pub fn release(&self, name: &str) {
        if let Ok((view, mmap)) = self.view(name) {
            release_tensor_pages(mmap, view.data());
        }
    }

    /// Reads `name` and checks its shape.
    pub fn read_shaped(&self, name: &str, expected: &[usize]) -> Result<HostTensor> {
        let t = self.read(name)?;
        if t.shape != expected {
            return Err(ModelError::Shape {
                name: name.to_string(),
                got: t.shape,
                expected: expected.to_vec(),
            });
        }
        Ok(t)
    }

    /// Refuses a float tensor holding NaN or infinity, naming it and its file.
    fn check_finite(&self, name: &str, bytes: &[u8], stored: DType) -> Result<()> {
        let Some(index) = first_non_finite(bytes, stored) else {
            return Ok(());
        };
        let size = stored.size();
        let value =
            temper_core::dtype::decode_le(&bytes[index * size..(index + 1) * size], stored)[0];
        let path = self
            .index
            .get(name)
            .map(|&i| self.files[i].0.clone())
            .unwrap_or_else(|| self.dir.clone());
        Err(ModelError::NonFinite {
            path,
            name: name.to_string(),
            index,
            value,
            fix: "use an intact copy of the weights",
        })
    }

    fn hint(&self, name: &str) -> String {
        let leaf = name.rsplit('.').nth(1).unwrap_or(name);
        let mut near: Vec<&str> = self
            .index
            .keys()
            .filter(|k| k.contains(leaf))
            .map(String::as_str)
            .collect();
        near.sort();
        near.truncate(3);
        if near.is_empty() {
            String::new()
        } else {
            format!(" (similar names present: {})", near.join(", "))
        }
    }
}

/// bitsandbytes' 8-bit weights ([`temper_quant::read_int8`]) read through the checks above:
/// errors name the file and tensor, and the file pages are released once read.
impl temper_quant::Int8Tensors for SafetensorsDir {
    type Error = ModelError;

    fn contains(&self, name: &str) -> bool {
        SafetensorsDir::contains(self, name)
    }

    fn read_u8(&self, name: &str) -> Result<Vec<u8>> {
        SafetensorsDir::read_u8(self, name)
    }

    fn read_i8(&self, name: &str, expected: &[usize]) -> Result<Vec<i8>> {
        SafetensorsDir::read_i8(self, name, expected)
    }

    fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        Ok(self.read_shaped(name, expected)?.data)
    }
}

/// FNV-1a, 64-bit: stable across builds, enough to tell files apart.
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// A fingerprint of a model folder: config.json's bytes and
/// [`SafetensorsDir::fingerprint`]. Two folders with equal fingerprints hold the same model
/// (short of an edit that keeps every sampled block).
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let config = dir.join("config.json");
    let mut h = Fnv::default();
    h.bytes(&std::fs::read(&config).map_err(io_err(&config))?);
    h.bytes(SafetensorsDir::open(dir)?.fingerprint()?.as_bytes());
    Ok(h.hex())
}

/// The storage type of a float tensor; other types are refused.
fn float_dtype(name: &str, dtype: Dtype) -> Result<DType> {
    match dtype {
        Dtype::F32 => Ok(DType::F32),
        Dtype::BF16 => Ok(DType::BF16),
        Dtype::F16 => Ok(DType::F16),
        other => Err(ModelError::Dtype {
            name: name.to_string(),
            dtype: format!("{other:?}"),
            expected: "F32, BF16 and F16",
        }),
    }
}

/// Drops the resident pages of `bytes`, a tensor's data inside `mmap`, once copied.
fn release_tensor_pages(mmap: &Mmap, bytes: &[u8]) {
    let offset = bytes.as_ptr() as usize - mmap.as_ptr() as usize;
    release_pages(mmap, offset, bytes.len());
}

/// Drops the resident pages of `len` bytes at `offset` of a read-only file mapping (they are
/// read from the file again if touched). Only whole pages inside the range are released.
#[cfg(unix)]
fn release_pages(mmap: &Mmap, offset: usize, len: usize) {
    const PAGE: usize = 4096;
    let start = offset.div_ceil(PAGE) * PAGE;
    let end = (offset + len) / PAGE * PAGE;
    if end > start {
        // SAFETY: the mapping is read-only and private to this process; after MADV_DONTNEED
        // its pages read back from the file, so no data is lost and no reference dangles.
        let _ = unsafe {
            mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

#[cfg(not(unix))]
fn release_pages(_mmap: &Mmap, _offset: usize, _len: usize) {}

/// The index of the first NaN or infinity among little-endian values of type `stored`: all
/// exponent bits set. Scanned in parallel chunks (a 7B model is 6.7e9 values).
pub fn first_non_finite(bytes: &[u8], stored: DType) -> Option<usize> {
    use rayon::prelude::*;
    let size = stored.size();
    let bad = |v: &[u8]| -> bool {
        match stored {
            DType::F32 => {
                let b = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                b & 0x7f80_0000 == 0x7f80_0000
            }
            DType::BF16 => u16::from_le_bytes([v[0], v[1]]) & 0x7f80 == 0x7f80,
            DType::F16 => u16::from_le_bytes([v[0], v[1]]) & 0x7c00 == 0x7c00,
        }
    };
    const CHUNK: usize = 1 << 16;
    bytes
        .par_chunks(CHUNK * size)
        .enumerate()
        .find_map_first(|(c, chunk)| {
            chunk
                .chunks_exact(size)
                .position(bad)
                .map(|i| c * CHUNK + i)
        })
}
