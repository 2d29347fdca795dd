//! `--device auto|cpu|cuda`: which backend runs the command.

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
}

/// Resolves the user's choice. This build runs on the CPU; `cuda` is refused with the reason
/// and `auto` says once why it picked the CPU.
pub fn resolve(choice: &str) -> Result<DeviceChoice> {
    match choice {
        "cpu" => Ok(DeviceChoice::Cpu),
        "auto" => {
            eprintln!("device: cpu (this build of temper has no CUDA backend yet)");
            Ok(DeviceChoice::Cpu)
        }
        "cuda" => bail!(
            "--device cuda: this build of temper has no CUDA backend yet; use --device cpu or auto"
        ),
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
