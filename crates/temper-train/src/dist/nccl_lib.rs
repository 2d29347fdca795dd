//! Finding libnccl at run time. cudarc opens NCCL by name (`libnccl.so`, `libnccl.so.<cuda
//! major>`, ...) and panics when none loads; NCCL itself installs as `libnccl.so.2` (its
//! soname; the pip wheel `nvidia-nccl-cu12` ships nothing else), which is not among those
//! names. So before NCCL is first used we probe, and when only `libnccl.so.2` exists we say
//! exactly how to expose it; the `--nproc-per-node` launcher does that itself with a link.

use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// Folders where NCCL is commonly installed, after those of LD_LIBRARY_PATH.
const COMMON_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/cuda/lib64",
    "/usr/local/nccl/lib",
    "/opt/nccl/lib",
];

/// True when cudarc can open NCCL by one of its names.
pub fn loadable() -> bool {
    // SAFETY: opens and closes the library; no symbol is called.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// Where to look: LD_LIBRARY_PATH, a Python environment's `nvidia/nccl/lib`, common folders.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(var) {
            let lib = Path::new(&prefix).join("lib");
            if let Ok(entries) = std::fs::read_dir(&lib) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with("python") {
                        dirs.push(e.path().join("site-packages/nvidia/nccl/lib"));
                    }
                }
            }
        }
    }
    dirs.extend(COMMON_DIRS.iter().map(PathBuf::from));
    dirs
}

/// A `libnccl.so.<n>` file that cudarc's names miss, if one is installed.
pub fn versioned_library() -> Option<PathBuf> {
    search_dirs().into_iter().find_map(|d| {
        let p = d.join("libnccl.so.2");
        p.exists().then_some(p)
    })
}

/// A folder holding `libnccl.so`, a link to `lib`: put it on LD_LIBRARY_PATH of a process
/// not yet started and cudarc finds NCCL. Made under `cache_dir`.
pub fn link_dir(lib: &Path, cache_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = cache_dir.join("nccl-link");
    std::fs::create_dir_all(&dir)?;
    let link = dir.join("libnccl.so");
    // Replace whatever is there (an older link) through a temporary name, so ranks starting
    // at once never see a missing link.
    let tmp = dir.join(format!(".libnccl.so.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(lib, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    Ok(dir)
}

/// Ok when NCCL can be opened; otherwise an error that says what to set.
pub fn ensure_loadable() -> Result<()> {
    if loadable() {
        return Ok(());
    }
    let msg = match versioned_library() {
        Some(lib) => {
            let dir = lib.parent().unwrap_or(Path::new("."));
            format!(
                "NCCL is installed as {} but is opened by the name libnccl.so: run `mkdir -p ~/.cache/temper/nccl-link && ln -sf {} ~/.cache/temper/nccl-link/libnccl.so` and start with LD_LIBRARY_PATH=$HOME/.cache/temper/nccl-link:{}:$LD_LIBRARY_PATH (temper train --nproc-per-node does this itself)",
                lib.display(),
                lib.display(),
                dir.display()
            )
        }
        None => "NCCL (libnccl.so) was not found: install NCCL (e.g. `pip install nvidia-nccl-cu12`, or the libnccl2 package) and add its lib folder to LD_LIBRARY_PATH, or use dist_backend: tcp".into(),
    };
    Err(TrainError::Distributed(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nccl_is_an_error_that_says_what_to_set_not_a_panic() {
        match ensure_loadable() {
            Ok(()) => assert!(loadable()),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("LD_LIBRARY_PATH"), "{msg}");
            }
        }
    }

    #[test]
    fn the_link_points_at_the_library_and_can_be_remade() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let lib = tmp.path().join("libnccl.so.2");
        std::fs::write(&lib, b"not really a library").expect("write");
        let cache = tmp.path().join("cache");
        for _ in 0..2 {
            let dir = link_dir(&lib, &cache).expect("link");
            let target = std::fs::read_link(dir.join("libnccl.so")).expect("a link");
            assert_eq!(target, lib);
        }
    }
}
