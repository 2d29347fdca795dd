//! `--device auto|cpu|cuda`: which backend runs the command.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use temper_core::cuda::{default_dtype, unavailable_reason};
use temper_core::{CudaBackend, DType};

pub enum DeviceChoice {
    Cpu,
    Cuda(Arc<CudaBackend>),
}

/// The storage type of activations and frozen weights: `auto` or a dtype name.
fn parse_dtype(dtype: &str) -> Result<Option<DType>> {
    if dtype == "auto" {
        return Ok(None);
    }
    dtype
        .parse::<DType>()
        .map(Some)
        .map_err(anyhow::Error::msg)
        .context("dtype: use auto, bfloat16, float16 or float32")
}

fn start_cuda(dtype: Option<DType>, ordinal: usize) -> Result<CudaBackend> {
    let dtype = match dtype {
        Some(d) => d,
        None => default_dtype(ordinal)?,
    };
    let be = CudaBackend::with_dtype(ordinal, dtype)?;
    eprintln!("device: cuda ({}, {dtype})", be.device_name());
    Ok(be)
}

/// Resolves the user's choice. `cuda` fails with the reason when no GPU can be used; `auto`
/// takes the GPU when there is one and otherwise says why it runs on the CPU. `dtype` is
/// `auto` (bfloat16 on GPUs from Ampere on, float16 with loss scaling on older ones) or a dtype name; the CPU
/// backend always computes in float32.
pub fn resolve(choice: &str, dtype: &str) -> Result<DeviceChoice> {
    resolve_on(choice, dtype, 0)
}

/// [`resolve`] on GPU `ordinal` (a rank's LOCAL_RANK).
pub fn resolve_on(choice: &str, dtype: &str, ordinal: usize) -> Result<DeviceChoice> {
    let dtype = parse_dtype(dtype)?;
    let cpu = || {
        if let Some(d) = dtype.filter(|&d| d != DType::F32) {
            eprintln!("dtype: the CPU backend computes in float32 (not {d})");
        }
        Ok(DeviceChoice::Cpu)
    };
    match choice {
        "cpu" => cpu(),
        "cuda" => match start_cuda(dtype, ordinal) {
            Ok(be) => Ok(DeviceChoice::Cuda(Arc::new(be))),
            Err(e) => bail!("--device cuda: {e}"),
        },
        "auto" => {
            let reason = match unavailable_reason() {
                Some(reason) => reason,
                None => match start_cuda(dtype, ordinal) {
                    Ok(be) => return Ok(DeviceChoice::Cuda(Arc::new(be))),
                    Err(e) => e.to_string(),
                },
            };
            eprintln!("device: cpu ({reason})");
            cpu()
        }
        other => bail!("--device `{other}` is not one of auto, cpu, cuda"),
    }
}

/// The process's peak resident memory in bytes (VmHWM), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
