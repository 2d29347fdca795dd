//! config.json for a Hugging Face folder, from a GGUF file's `<arch>.*` metadata (llama.cpp's
//! key names, as `convert_hf_to_gguf.py` writes them and transformers' GGUF loader reads them).

use serde_json::{json, Map, Value as Json};

use crate::error::{GgufError, Result};
use crate::reader::GgufFile;

/// The architectures temper converts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufArch {
    Llama,
    Qwen2,
    /// Qwen3 (dense): per-head `attn_q_norm` / `attn_k_norm`, head_dim in `key_length`.
    Qwen3,
}

impl GgufArch {
    pub fn of(file: &GgufFile) -> Result<Self> {
        match file.str("general.architecture")? {
            "llama" => Ok(GgufArch::Llama),
            "qwen2" => Ok(GgufArch::Qwen2),
            "qwen3" => Ok(GgufArch::Qwen3),
            other => Err(GgufError::Unsupported {
                path: file.path().to_path_buf(),
                msg: format!(
                    "architecture `{other}` cannot be converted; temper converts llama, qwen2 and qwen3 GGUFs"
                ),
            }),
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            GgufArch::Llama => "llama",
            GgufArch::Qwen2 => "qwen2",
            GgufArch::Qwen3 => "qwen3",
        }
    }
}

/// The numbers the tensor conversion needs besides config.json.
#[derive(Clone, Debug)]
pub struct Dims {
    pub heads: usize,
    pub kv_heads: usize,
}

/// config.json (as a JSON object) and the head counts, for `dtype` ("bfloat16", ...).
pub fn hf_config(file: &GgufFile, arch: GgufArch, dtype: &str) -> Result<(Json, Dims)> {
    let a = arch.key();
    let k = |name: &str| format!("{a}.{name}");
    let hidden = file.u64(&k("embedding_length"))?;
    let layers = file.u64(&k("block_count"))?;
    check_block_count(file, &k("block_count"), layers)?;
    let intermediate = file.u64(&k("feed_forward_length"))?;
    let heads = file.u64(&k("attention.head_count"))?;
    let kv_heads = file
        .opt_u64(&k("attention.head_count_kv"))?
        .unwrap_or(heads);
    let eps = file
        .opt_f64(&k("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: k("attention.layer_norm_rms_epsilon"),
            msg: "is missing".into(),
        })?;
    let theta = file.opt_f64(&k("rope.freq_base"))?.unwrap_or(10000.0);
    let context = file.opt_u64(&k("context_length"))?;
    // Qwen3's head_dim is not hidden / heads: llama.cpp writes it as attention.key_length.
    let key_length = file.opt_u64(&k("attention.key_length"))?;
    if heads == 0 || kv_heads == 0 || (key_length.is_none() && hidden % heads != 0) {
        return Err(GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: k("attention.head_count"),
            msg: format!(
                "is {heads} (kv {kv_heads}), which does not divide the hidden size {hidden}"
            ),
        });
    }
    // The vocabulary is the embedding's row count; the token list or vocab_size otherwise.
    let vocab = match file.tensor("token_embd.weight") {
        Some(t) if t.dims.len() == 2 => t.dims[1],
        _ => match file.opt_u64(&k("vocab_size"))? {
            Some(v) => v,
            None => file
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len() as u64)
                .ok_or_else(|| GgufError::Metadata {
                    path: file.path().to_path_buf(),
                    key: "tokenizer.ggml.tokens".into(),
                    msg: "is missing, and neither token_embd.weight nor vocab_size gives the vocabulary size".into(),
                })?,
        },
    };
    let tied = file.tensor("output.weight").is_none();
    let has_qkv_bias = file.tensor("blk.0.attn_q.bias").is_some();

    let mut c = Map::new();
    let (class, model_type) = match arch {
        GgufArch::Llama => ("LlamaForCausalLM", "llama"),
        GgufArch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        GgufArch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
    };
    c.insert("architectures".into(), json!([class]));
    c.insert("model_type".into(), json!(model_type));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("intermediate_size".into(), json!(intermediate));
    c.insert("num_hidden_layers".into(), json!(layers));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    if arch == GgufArch::Llama {
        // transformers maps rope.dimension_count to head_dim for llama only.
        let head_dim = file
            .opt_u64(&k("rope.dimension_count"))?
            .unwrap_or(hidden / heads);
        c.insert("head_dim".into(), json!(head_dim));
        c.insert("attention_bias".into(), json!(has_qkv_bias));
        c.insert("mlp_bias".into(), json!(false));
    }
    if arch == GgufArch::Qwen3 {
        let head_dim = match key_length {
            Some(d) => d,
            None => file
                .opt_u64(&k("rope.dimension_count"))?
                .unwrap_or(hidden / heads),
        };
        c.insert("head_dim".into(), json!(head_dim));
        c.insert("attention_bias".into(), json!(has_qkv_bias));
    }
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("rms_norm_eps".into(), json!(eps));
    c.insert("rope_theta".into(), json!(theta));
    let rope_dim = match c.get("head_dim").and_then(|v| v.as_u64()) {
        Some(d) => d,
        None => file
            .opt_u64(&k("rope.dimension_count"))?
            .unwrap_or(hidden / heads),
    };
    if let Some(scaling) = rope_scaling(file, a, rope_dim as usize, theta)? {
        c.insert("rope_scaling".into(), scaling);
    }
    if let Some(ctx) = context {
        c.insert("max_position_embeddings".into(), json!(ctx));
    }
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("tie_word_embeddings".into(), json!(tied));
    for (hf, gguf) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(id) = file.opt_u64(gguf)? {
            c.insert(hf.into(), json!(id));
        }
    }
    c.insert("torch_dtype".into(), json!(dtype));
    c.insert("use_cache".into(), json!(true));
    Ok((
        Json::Object(c),
        Dims {
            heads: heads as usize,
            kv_heads: kv_heads as usize,
        },
    ))
}

/// `block_count` must be the number of `blk.<i>.` tensor groups the file holds: a larger one
/// would size the model by a number no tensor backs, a smaller one would leave layers unused.
fn check_block_count(file: &GgufFile, key: &str, count: u64) -> Result<()> {
    let mut blocks: Vec<u64> = file
        .tensors
        .iter()
        .filter_map(|t| t.name.strip_prefix("blk."))
        .filter_map(|rest| rest.split('.').next())
        .filter_map(|i| i.parse().ok())
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    let contiguous = blocks.iter().enumerate().all(|(i, &b)| b == i as u64);
    if count == 0 || count != blocks.len() as u64 || !contiguous {
        return Err(GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: key.to_string(),
            msg: format!(
                "is {count}, but the file holds tensors for {} blocks{}: the metadata does not \
                 match the tensors (a damaged or hand-edited file)",
                blocks.len(),
                match blocks.last() {
                    Some(last) if !contiguous => format!(" (numbered up to blk.{last})"),
                    _ => String::new(),
                }
            ),
        });
    }
    Ok(())
}

/// `rope_scaling` from `<arch>.rope.scaling.*` (linear and yarn), or llama3 scaling from the
/// `rope_freqs` tensor (see [`llama3_from_rope_freqs`]).
fn rope_scaling(file: &GgufFile, a: &str, head_dim: usize, theta: f64) -> Result<Option<Json>> {
    let ty = match file.get(&format!("{a}.rope.scaling.type")) {
        Some(v) => v.as_str().map(str::to_string),
        None => None,
    };
    let factor = file.opt_f64(&format!("{a}.rope.scaling.factor"))?;
    let orig = file.opt_u64(&format!("{a}.rope.scaling.original_context_length"))?;
    if let Some(t) = file.tensor("rope_freqs.weight") {
        let freqs = file.tensor_f32(t)?;
        return match llama3_from_rope_freqs(&freqs, head_dim, theta) {
            Some(scaling) => Ok(Some(scaling)),
            None => Err(GgufError::Tensor {
                path: file.path().to_path_buf(),
                tensor: t.name.clone(),
                msg: format!(
                    "its {} factors are not llama3 RoPE scaling for head_dim {head_dim} and \
                     rope.freq_base {theta}; temper converts only that kind of rope_freqs",
                    freqs.len()
                ),
            }),
        };
    }
    Ok(match (ty.as_deref(), factor) {
        (Some("linear"), Some(f)) if f != 1.0 => {
            Some(json!({"type": "linear", "rope_type": "linear", "factor": f}))
        }
        (Some("yarn"), Some(f)) => {
            let mut m = json!({"type": "yarn", "rope_type": "yarn", "factor": f});
            if let Some(o) = orig {
                m["original_max_position_embeddings"] = json!(o);
            }
            Some(m)
        }
        (Some("none") | None, _) | (Some("linear"), _) => None,
        (Some(other), _) => {
            return Err(GgufError::Unsupported {
                path: file.path().to_path_buf(),
                msg: format!("rope scaling type `{other}` is not converted (linear and yarn are)"),
            })
        }
    })
}

/// llama3 RoPE scaling (`rope_type: llama3`) from llama.cpp's `rope_freqs` tensor, which holds,
/// per frequency i of inv_freq = theta^(-2i/d), the divisor transformers applies:
/// `1 / ((1 - s) / factor + s)` with `s = clamp((old / wavelen - low) / (high - low), 0, 1)` and
/// wavelen = 2 pi / inv_freq (convert_hf_to_gguf.py `LlamaModel.generate_extra_tensors`).
/// The divisors depend on (old, low, high) only through `old / (high - low)` and
/// `low / (high - low)`, so unless Llama 3.x's own (old 8192, low 1, high 4) reproduce them,
/// low_freq_factor is taken as 1 and the other two are solved from two partly scaled
/// frequencies, or with one such frequency, high_freq_factor as 4 and the original context
/// solved from it. None when no such parameters reproduce every divisor to 1e-4.
pub fn llama3_from_rope_freqs(freqs: &[f32], head_dim: usize, theta: f64) -> Option<Json> {
    if freqs.is_empty() || freqs.len() != head_dim / 2 {
        return None;
    }
    let factor = freqs.iter().fold(0f64, |m, &x| m.max(x as f64));
    if !(factor.is_finite() && factor >= 1.0) {
        return None;
    }
    let wavelen = |i: usize| {
        let inv = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
        2.0 * std::f64::consts::PI / inv
    };
    let fits = |old: f64, low: f64, high: f64| {
        freqs.iter().enumerate().all(|(i, &f)| {
            let w = wavelen(i);
            let d = if w < old / high {
                1.0
            } else if w > old / low {
                factor
            } else {
                let s = (old / w - low) / (high - low);
                1.0 / ((1.0 - s) / factor + s)
            };
            (d - f as f64).abs() <= 1e-4 * d
        })
    };
    let json = |old: f64, low: f64, high: f64| {
        json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": old,
        })
    };
    if fits(8192.0, 1.0, 4.0) {
        return Some(json(8192.0, 1.0, 4.0));
    }
    // Partly scaled frequencies: s = a / wavelen - b, a = old / (high - low), b = low / (high - low).
    let mid: Vec<(f64, f64)> = freqs
        .iter()
        .enumerate()
        .filter(|(_, &f)| f as f64 > 1.0 + 1e-6 && (f as f64) < factor - 1e-6)
        .map(|(i, &f)| {
            let s = (1.0 / f as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
            (1.0 / wavelen(i), s)
        })
        .collect();
    let (&(x0, s0), &(x1, s1)) = (mid.first()?, mid.last()?);
    if mid.len() == 1 {
        // s0 = (old x0 - low) / (high - low) with low 1, high 4.
        let old = (3.0 * s0 + 1.0) / x0;
        return fits(old, 1.0, 4.0).then(|| json(old, 1.0, 4.0));
    }
    let a = (s1 - s0) / (x1 - x0);
    let b = a * x0 - s0;
    if !(a > 0.0 && b > 0.0) {
        return None;
    }
    let (low, high, old) = (1.0, 1.0 + 1.0 / b, a / b);
    fits(old, low, high).then(|| json(old, low, high))
}
