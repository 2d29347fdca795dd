//! `--device auto|cpu|cuda`: which backend runs the command.

use std::sync::Arc;

use anyhow::{bail, Result};
use temper_core::cuda::unavailable_reason;
use temper_core::CudaBackend;

pub enum DeviceChoice {
    Cpu,
    Cuda(Arc<CudaBackend>),
}

/// Resolves the user's choice. `cuda` fails with the reason when no GPU can be used; `auto`
/// takes the GPU when there is one and otherwise says why it runs on the CPU.
pub fn resolve(choice: &str) -> Result<DeviceChoice> {
    match choice {
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => match CudaBackend::new(0) {
            Ok(be) => {
                eprintln!("device: cuda ({})", be.device_name());
                Ok(DeviceChoice::Cuda(Arc::new(be)))
            }
            Err(e) => bail!("--device cuda: {e}"),
        },
        "auto" => {
            let reason = match unavailable_reason() {
                Some(reason) => reason,
                None => match CudaBackend::new(0) {
                    Ok(be) => {
                        eprintln!("device: cuda ({})", be.device_name());
                        return Ok(DeviceChoice::Cuda(Arc::new(be)));
                    }
                    Err(e) => e.to_string(),
                },
            };
            eprintln!("device: cpu ({reason})");
            Ok(DeviceChoice::Cpu)
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
