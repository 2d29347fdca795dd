//! A Hugging Face Hub dataset id (`owner/name`) resolved through the local Hub cache, the
//! layout `datasets.load_dataset` and `huggingface-cli download --repo-type dataset` leave:
//! `<cache>/datasets--owner--name/snapshots/<revision>/...`, where `<cache>` is
//! `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, and the revision is
//! the one `refs/main` names (else the only snapshot). Nothing is downloaded.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Extensions of dataset files: a name ending in one is a path, never a Hub id.
const FILE_EXTENSIONS: &[&str] = &[
    "jsonl", "json", "parquet", "arrow", "csv", "tsv", "txt", "gz", "zst",
];

/// Whether `path` reads as a Hub id rather than a file: `owner/name`, no other slashes,
/// not starting with `.` or `/`, and not ending in a dataset file's extension.
pub fn looks_like_hub_id(path: &Path) -> bool {
    let Some(s) = path.to_str() else {
        return false;
    };
    let has_file_extension = s
        .rsplit_once('.')
        .is_some_and(|(_, ext)| FILE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()));
    if has_file_extension {
        return false;
    }
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The Hub cache folder the environment names.
pub fn hub_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(home).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// The snapshot folder of dataset `id` in the Hub cache at `cache`.
pub fn resolve_in(cache: &Path, id: &str) -> Result<PathBuf> {
    let repo = cache.join(format!("datasets--{}", id.replace('/', "--")));
    let missing = |message: String| DataError::Config {
        path: PathBuf::from(id),
        message,
    };
    if !repo.is_dir() {
        return Err(missing(format!(
            "no such file, and no Hugging Face Hub dataset `{id}` in the local cache ({} not found); \
             download it first (e.g. `huggingface-cli download --repo-type dataset {id}`) or give a file path",
            repo.display()
        )));
    }
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        let dir = snapshots.join(rev.trim());
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    let mut revs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .map_err(|source| DataError::Io {
            path: snapshots.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    match revs.len() {
        1 => Ok(revs.remove(0)),
        0 => Err(missing(format!(
            "{} holds no snapshot",
            snapshots.display()
        ))),
        n => Err(missing(format!(
            "{} holds {n} snapshots and no refs/main; give the snapshot folder's path",
            snapshots.display()
        ))),
    }
}
