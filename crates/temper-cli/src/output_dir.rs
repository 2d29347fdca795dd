//! The output folder of a training run. A fresh run refuses a folder that already holds
//! files (its checkpoints could later be resumed as if they were this run's) unless
//! `overwrite_output_dir` is set, and a lock file holding the pid keeps a second run out
//! of a folder that one is writing.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The lock file, inside output_dir.
pub const LOCK_FILE: &str = ".temper.lock";

/// Held while a run writes to its output folder; removed when dropped.
pub struct Lock {
    path: PathBuf,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes the folder's lock (creating the folder). A lock left by a process that no longer
/// runs (killed, or stopped with Ctrl-C) is taken over.
pub fn lock(dir: &Path) -> Result<Lock> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    for _ in 0..3 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                writeln!(f, "{}", std::process::id())
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(Lock { path });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if let Ok(pid) = text.trim().parse::<i32>() {
                    if pid != std::process::id() as i32 && alive(pid) {
                        bail!(
                            "output_dir {} is in use by another temper run (pid {pid}): wait for \
                             it to finish or choose another output_dir (if no such run is going, \
                             remove {})",
                            dir.display(),
                            path.display()
                        );
                    }
                }
                // Stale: its process is gone.
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!("cannot take the lock {}", path.display())
}

/// True when a process with this id runs (or exists under another user).
fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// What temper writes into an output folder: removed by `--overwrite_output_dir`.
fn is_temper_output(name: &str) -> bool {
    name.starts_with("checkpoint-")
        || (name.starts_with(".checkpoint-") && name.ends_with(".partial"))
        || matches!(
            name,
            "metrics.jsonl" | "adapter_config.json" | "adapter_model.safetensors"
        )
}

/// Before a fresh run: the folder must be empty (the lock aside), or `overwrite` given, in
/// which case temper's own files in it are removed (others are left alone).
pub fn check_fresh(dir: &Path, overwrite: bool) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names: Vec<String> = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("reading {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != LOCK_FILE {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    if !overwrite {
        let shown: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
        bail!(
            "output_dir {} is not empty (it holds {}{}): a fresh run would mix its files with \
             these, and a later --resume could continue a stale checkpoint; continue that run \
             with --resume, choose another output_dir, or pass --overwrite_output_dir to \
             replace temper's files there",
            dir.display(),
            shown.join(", "),
            if names.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    for name in names.iter().filter(|n| is_temper_output(n)) {
        let path = dir.join(name);
        let r = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.with_context(|| format!("--overwrite_output_dir: removing {}", path.display()))?;
    }
    Ok(())
}

/// `--out` of a command that writes a model folder: absent or empty, unless `force`.
pub fn check_out(out: &Path, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let first = match std::fs::read_dir(out) {
        Ok(mut e) => e.next(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            bail!("--out {} exists and is not a folder", out.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    if let Some(entry) = first {
        let name = entry
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .unwrap_or_default();
        bail!(
            "--out {} is not empty (it holds {name}): choose another folder, or pass --force \
             to write over the files there",
            out.display()
        );
    }
    Ok(())
}
