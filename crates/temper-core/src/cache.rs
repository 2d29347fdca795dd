//! Where temper keeps what it can rebuild (compiled kernels, imported GGUF models, tokenised
//! datasets, helper links): one root, `$TEMPER_CACHE_DIR`, else `$XDG_CACHE_HOME/temper`, else
//! `~/.cache/temper`; None when none of them is set. Each user of the cache takes its own
//! folder under the root.

use std::path::PathBuf;

/// The cache root (see the module documentation).
pub fn root() -> Option<PathBuf> {
    root_from(
        std::env::var_os("TEMPER_CACHE_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// `root()/sub`, when there is a root.
pub fn dir(sub: &str) -> Option<PathBuf> {
    root().map(|r| r.join(sub))
}

fn root_from(
    temper: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(temper)
        .or_else(|| set(xdg).map(|x| x.join("temper")))
        .or_else(|| set(home).map(|h| h.join(".cache").join("temper")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temper_cache_dir_then_xdg_then_home() {
        let s = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(
            root_from(s("/c"), s("/x"), s("/h")),
            Some(PathBuf::from("/c"))
        );
        assert_eq!(
            root_from(None, s("/x"), s("/h")),
            Some(PathBuf::from("/x/temper"))
        );
        assert_eq!(
            root_from(s(""), None, s("/h")),
            Some(PathBuf::from("/h/.cache/temper"))
        );
        assert_eq!(root_from(None, None, None), None);
    }
}
