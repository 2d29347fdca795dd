//! NVRTC: kernel sources -> PTX for the GPU present, cached on disk by (source hash, arch,
//! NVRTC version) so a run compiles each kernel once per machine.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

use crate::{CoreError, Result};

/// Headers the sources include, by file name; NVRTC gets no include path, so [`expand`]
/// pastes their text in.
const HEADERS: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../kernels/common.cuh")),
    (
        "flash_common.cuh",
        include_str!("../../kernels/flash_common.cuh"),
    ),
];

/// Every kernel source, by file name.
pub const SOURCES: &[(&str, &str)] = &[
    (
        "elementwise.cu",
        include_str!("../../kernels/elementwise.cu"),
    ),
    ("layers.cu", include_str!("../../kernels/layers.cu")),
    ("attention.cu", include_str!("../../kernels/attention.cu")),
    (
        "flash_attention.cu",
        include_str!("../../kernels/flash_attention.cu"),
    ),
    (
        "flash_hopper.cu",
        include_str!("../../kernels/flash_hopper.cu"),
    ),
    (
        "cross_entropy.cu",
        include_str!("../../kernels/cross_entropy.cu"),
    ),
    ("dequant.cu", include_str!("../../kernels/dequant.cu")),
    ("optim8.cu", include_str!("../../kernels/optim8.cu")),
    ("quant.cu", include_str!("../../kernels/quant.cu")),
];

/// Kernel tuning without a rebuild: when `TEMPER_KERNEL_SOURCES` names a folder, a kernel file
/// found there (same name as in `SOURCES`, with the headers it includes beside it or built in)
/// replaces the built-in one. Unset in normal use.
pub fn source_override_dir() -> Option<PathBuf> {
    std::env::var_os("TEMPER_KERNEL_SOURCES")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The text of `file` in the override folder `dir`, with the includes of headers found in the
/// same folder expanded from there (the others from the built-in headers when compiled);
/// `None` when the folder has no such file.
pub fn read_override(dir: &std::path::Path, file: &str) -> Result<Option<String>> {
    let path = dir.join(file);
    if !path.exists() {
        return Ok(None);
    }
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| {
            CoreError::Device(format!(
                "TEMPER_KERNEL_SOURCES: could not read {}: {e}; unset the variable to use the built-in kernels",
                p.display()
            ))
        })
    };
    let mut text = read(&path)?;
    for (name, _) in HEADERS {
        let header = dir.join(name);
        if header.exists() {
            text = text.replace(&format!("#include \"{name}\""), &read(&header)?);
        }
    }
    Ok(Some(text))
}

/// The virtual architectures temper compiles for, oldest first (T4 .. H100/H200).
pub const ARCHS: &[(u32, &str)] = &[
    (75, "compute_75"),
    (80, "compute_80"),
    (86, "compute_86"),
    (89, "compute_89"),
    (90, "compute_90"),
];

/// The newest supported virtual architecture not above the device's compute capability.
pub fn arch_for(major: i32, minor: i32) -> Result<&'static str> {
    let cc = (major * 10 + minor) as u32;
    ARCHS
        .iter()
        .rev()
        .find(|(a, _)| *a <= cc)
        .map(|(_, name)| *name)
        .ok_or_else(|| CoreError::Device(format!("compute capability {major}.{minor} is below sm_75 (T4), the oldest GPU temper supports")))
}

/// The source as NVRTC sees it: each `#include` of one of [`HEADERS`] replaced by the
/// header's text, since no include path is handed to NVRTC.
pub fn expand(source: &str) -> String {
    let mut text = source.to_string();
    for (name, header) in HEADERS {
        text = text.replace(&format!("#include \"{name}\""), header);
    }
    text.replace("#pragma once", "")
}

/// NVRTC's version, part of the cache key.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    let mut major = 0;
    let mut minor = 0;
    // SAFETY: nvrtcVersion writes two ints through valid pointers.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CoreError::Device(format!(
            "nvrtcVersion failed: {status:?}"
        )));
    }
    Ok((major, minor))
}

fn cache_dir() -> Option<PathBuf> {
    crate::cache::dir("kernels")
}

/// Compiles one source for `arch`, without the disk cache. The error carries NVRTC's log.
pub fn compile_uncached(name: &str, source: &str, arch: &'static str) -> Result<String> {
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some(name.to_string()),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(expand(source), opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => CoreError::Device(format!(
            "NVRTC could not compile {name} for {arch}:\n{}",
            log.to_string_lossy()
        )),
        other => CoreError::Device(format!("NVRTC failed on {name} for {arch}: {other:?}")),
    })?;
    Ok(ptx.to_src())
}

/// Compiles (or reads from the cache) one source for `arch`.
pub fn compile(name: &str, source: &str, arch: &'static str) -> Result<Ptx> {
    let (major, minor) = nvrtc_version()?;
    let mut h = DefaultHasher::new();
    (expand(source), arch, major, minor).hash(&mut h);
    let key = format!(
        "{}-{arch}-nvrtc{major}.{minor}-{:016x}.ptx",
        name.trim_end_matches(".cu"),
        h.finish()
    );
    let cached = cache_dir().map(|d| d.join(&key));
    if let Some(path) = &cached {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Ok(Ptx::from_src(text));
        }
    }
    let ptx = compile_uncached(name, source, arch)?;
    if let Some(path) = &cached {
        // A cache that cannot be written only costs a recompile next time.
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, &ptx).is_ok() {
            let _ = std::fs::rename(&tmp, path);
        }
    }
    Ok(Ptx::from_src(ptx))
}

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}
