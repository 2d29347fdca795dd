//! `--device auto|cpu|cuda`: which backend runs the command.

use std::path::{Path, PathBuf};
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
    resolve_on(choice, dtype, 0, true)
}

/// [`resolve`] on GPU `ordinal` (a rank's LOCAL_RANK). `lead`: this process says why it
/// runs on the CPU (one rank of several keeps quiet: the others run on the same host).
pub fn resolve_on(choice: &str, dtype: &str, ordinal: usize, lead: bool) -> Result<DeviceChoice> {
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
            if lead {
                eprintln!("{}", cpu_notice(&reason, notice_marker().as_deref()));
            }
            cpu()
        }
        other => bail!("--device `{other}` is not one of auto, cpu, cuda"),
    }
}

/// Where the last reason for running on the CPU is kept: `cpu-notice` in temper's cache
/// folder (`temper_core::cache`).
fn notice_marker() -> Option<PathBuf> {
    temper_core::cache::dir("cpu-notice")
}

/// The line `device: auto` prints when it falls back to the CPU: the reason and its advice
/// in full the first time, then (same reason, `marker` says so) one short line, so that a
/// script running temper several times says it once. Without a marker file: always in full.
fn cpu_notice(reason: &str, marker: Option<&Path>) -> String {
    let Some(marker) = marker else {
        return format!("device: cpu ({reason})");
    };
    if std::fs::read_to_string(marker).is_ok_and(|seen| seen == reason) {
        return "device: cpu (no usable GPU, as before; `--device cuda` says why)".into();
    }
    if let Some(dir) = marker.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // Best effort: a read-only home only means the reason is printed in full each time.
    let _ = std::fs::write(marker, reason);
    format!("device: cpu ({reason})")
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_cpu_notice_is_in_full_once_per_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("cache/cpu-notice");
        let full = super::cpu_notice("libcuda.so could not be loaded", Some(&marker));
        assert!(full.contains("libcuda.so could not be loaded"), "{full}");
        let again = super::cpu_notice("libcuda.so could not be loaded", Some(&marker));
        assert!(
            again.contains("as before") && !again.contains("libcuda"),
            "{again}"
        );
        // Another reason is news.
        let other = super::cpu_notice("the NVIDIA driver reports no GPU", Some(&marker));
        assert!(other.contains("reports no GPU"), "{other}");
        assert!(super::cpu_notice("x", None).contains("(x)"));
    }
}
