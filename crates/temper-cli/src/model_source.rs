//! `--model` as a Hugging Face folder or a GGUF file. A GGUF file is imported once, in f32,
//! into a cache folder keyed by its size, modification time, a hash of its bytes and the
//! version of the import (`temper_gguf::IMPORT_VERSION`, so a folder written by an older
//! temper is not reused), and the folder is used from then on.
//!
//! The cache is `$TEMPER_CACHE_DIR/gguf`, else `$XDG_CACHE_HOME/temper/gguf`, else
//! `~/.cache/temper/gguf`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use temper_gguf::{import, GgufFile, OutDtype, IMPORT_VERSION};

/// True for a file that starts with the GGUF magic.
fn is_gguf(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

fn cache_root() -> PathBuf {
    temper_core::cache::dir("gguf")
        .unwrap_or_else(|| std::env::temp_dir().join("temper-cache").join("gguf"))
}

/// FNV-1a (64-bit) of the file's bytes: cheap, stable across builds, enough to tell files apart.
fn fnv1a(path: &Path) -> Result<u64> {
    let mut f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(h);
        }
        for &b in &buf[..n] {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The folder to load for `model`: `model` itself unless it is a GGUF file, in which case the
/// cached f32 import of it (made now if absent).
pub fn resolve(model: &Path) -> Result<PathBuf> {
    resolve_in(model, &cache_root())
}

fn resolve_in(model: &Path, cache: &Path) -> Result<PathBuf> {
    if !is_gguf(model) {
        return Ok(model.to_path_buf());
    }
    let meta = std::fs::metadata(model).with_context(|| format!("reading {}", model.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let hash = fnv1a(model)?;
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let name = format!(
        "{stem}-{}-{mtime}-{hash:016x}-f32-v{IMPORT_VERSION}",
        meta.len()
    );
    let dir = cache.join(&name);
    if dir.join("model.safetensors").is_file() && dir.join("config.json").is_file() {
        eprintln!(
            "model: {} (imported earlier into {})",
            model.display(),
            dir.display()
        );
        return Ok(dir);
    }
    eprintln!(
        "model: importing {} into {} (once; float32)",
        model.display(),
        dir.display()
    );
    // Imported beside the final folder and renamed, so a half-written import is never used.
    let partial = cache.join(format!("{name}.partial-{}", std::process::id()));
    let file = GgufFile::open(model)?;
    import(&file, &partial, OutDtype::F32)
        .with_context(|| format!("importing {}", model.display()))?;
    match std::fs::rename(&partial, &dir) {
        Ok(()) => {}
        // Another process finished the same import first: use its folder.
        Err(_) if dir.join("model.safetensors").is_file() => {
            let _ = std::fs::remove_dir_all(&partial);
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("moving {} to {}", partial.display(), dir.display()))
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gguf_is_imported_once_and_a_folder_passes_through() {
        let gguf =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/tiny_qwen2.gguf");
        let cache = tempfile::tempdir().unwrap();
        let dir = resolve_in(&gguf, cache.path()).unwrap();
        assert!(dir.starts_with(cache.path()));
        assert!(dir.join("config.json").is_file() && dir.join("tokenizer.json").is_file());
        let written = std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        // The second call reuses the folder (same name, file not rewritten).
        let again = resolve_in(&gguf, cache.path()).unwrap();
        assert_eq!(again, dir);
        let after = std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(written, after);
        // Named for this version of the import, so older imports are not reused.
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.ends_with(&format!("-f32-v{IMPORT_VERSION}")), "{name}");
        // Only the finished folder is left in the cache.
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
        // A folder is returned as it is.
        assert_eq!(
            resolve_in(cache.path(), cache.path()).unwrap(),
            cache.path()
        );
    }
}
