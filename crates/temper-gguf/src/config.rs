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
}

impl GgufArch {
    pub fn of(file: &GgufFile) -> Result<Self> {
        match file.str("general.architecture")? {
            "llama" => Ok(GgufArch::Llama),
            "qwen2" => Ok(GgufArch::Qwen2),
            other => Err(GgufError::Unsupported {
                path: file.path().to_path_buf(),
                msg: format!(
                    "architecture `{other}` cannot be converted; temper converts llama and qwen2 GGUFs"
                ),
            }),
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            GgufArch::Llama => "llama",
            GgufArch::Qwen2 => "qwen2",
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
    if heads == 0 || kv_heads == 0 || hidden % heads != 0 {
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
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("rms_norm_eps".into(), json!(eps));
    c.insert("rope_theta".into(), json!(theta));
    if let Some(scaling) = rope_scaling(file, a)? {
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

/// `rope_scaling` from `<arch>.rope.scaling.*` (linear and yarn). llama3-style scaling is stored
/// by llama.cpp as a `rope_freqs` tensor of per-frequency factors whose parameters are not in
/// the metadata; it is reported, not reconstructed.
fn rope_scaling(file: &GgufFile, a: &str) -> Result<Option<Json>> {
    let ty = match file.get(&format!("{a}.rope.scaling.type")) {
        Some(v) => v.as_str().map(str::to_string),
        None => None,
    };
    let factor = file.opt_f64(&format!("{a}.rope.scaling.factor"))?;
    let orig = file.opt_u64(&format!("{a}.rope.scaling.original_context_length"))?;
    if file.tensor("rope_freqs.weight").is_some() {
        eprintln!(
            "note: {}: has a rope_freqs tensor (llama3-style RoPE scaling); its parameters are not in the metadata and are not converted, which matters only beyond the original context length",
            file.path().display()
        );
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
