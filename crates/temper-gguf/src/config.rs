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
    /// Phi-3 / Phi-3.5 / Phi-4-mini: fused `attn_qkv` and `ffn_up` (gate and up), LongRoPE
    /// factors as `rope_factors_long` / `rope_factors_short` tensors.
    Phi3,
    /// Gemma: norms stored as 1 + w, head_dim in `key_length`, tied embeddings.
    Gemma,
    /// Gemma 2: Gemma plus post-norms, soft-capping, alternating sliding layers.
    Gemma2,
    /// Gemma 3 (text): Gemma 2 without attention soft-capping, with q/k norms and a local
    /// RoPE base for the sliding layers.
    Gemma3,
}

impl GgufArch {
    pub fn of(file: &GgufFile) -> Result<Self> {
        match file.str("general.architecture")? {
            "llama" => Ok(GgufArch::Llama),
            "qwen2" => Ok(GgufArch::Qwen2),
            "qwen3" => Ok(GgufArch::Qwen3),
            "phi3" => Ok(GgufArch::Phi3),
            "gemma" => Ok(GgufArch::Gemma),
            "gemma2" => Ok(GgufArch::Gemma2),
            "gemma3" => Ok(GgufArch::Gemma3),
            other => Err(GgufError::Unsupported {
                path: file.path().to_path_buf(),
                msg: format!(
                    "architecture `{other}` cannot be converted; temper converts llama, qwen2, \
                     qwen3, phi3, gemma, gemma2 and gemma3 GGUFs"
                ),
            }),
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            GgufArch::Llama => "llama",
            GgufArch::Qwen2 => "qwen2",
            GgufArch::Qwen3 => "qwen3",
            GgufArch::Phi3 => "phi3",
            GgufArch::Gemma => "gemma",
            GgufArch::Gemma2 => "gemma2",
            GgufArch::Gemma3 => "gemma3",
        }
    }

    /// Gemma's RMSNorm multiplies by (1 + w); llama.cpp's converter stores w + 1
    /// (`GemmaModel.modify_tensors`, `Gemma2Model`, `Gemma3Model.norm_shift`: every tensor
    /// whose name ends in `norm.weight`), so the import subtracts it again.
    pub fn norm_shift(self) -> f32 {
        match self {
            GgufArch::Gemma | GgufArch::Gemma2 | GgufArch::Gemma3 => 1.0,
            _ => 0.0,
        }
    }

    fn is_gemma(self) -> bool {
        self.norm_shift() != 0.0
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
        GgufArch::Phi3 => ("Phi3ForCausalLM", "phi3"),
        GgufArch::Gemma => ("GemmaForCausalLM", "gemma"),
        GgufArch::Gemma2 => ("Gemma2ForCausalLM", "gemma2"),
        GgufArch::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
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
    if arch.is_gemma() {
        gemma_keys(file, arch, &mut c, hidden, heads, layers, key_length)?;
    } else {
        c.insert("hidden_act".into(), json!("silu"));
    }
    if arch == GgufArch::Phi3 {
        phi3_keys(file, &mut c, hidden, heads, context)?;
    }
    c.insert("rms_norm_eps".into(), json!(eps));
    // llama.cpp's converter writes no rope.freq_base for Gemma and Gemma 2 (their
    // `set_gguf_parameters` skip the base class's), whose configs use transformers' default.
    let theta = match (arch, file.opt_f64(&k("rope.freq_base"))?) {
        (_, Some(t)) => t,
        (GgufArch::Gemma3, None) => 1_000_000.0,
        (_, None) => theta,
    };
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

/// Gemma, Gemma 2 and Gemma 3's config keys: head_dim (`attention.key_length`), the tanh GeLU,
/// and for Gemma 2 / 3 the sliding window and its layer pattern, soft-capping, the query scale
/// and Gemma 3's local RoPE base, each read as llama.cpp's `load_arch_hparams` reads it.
fn gemma_keys(
    file: &GgufFile,
    arch: GgufArch,
    c: &mut Map<String, Json>,
    hidden: u64,
    heads: u64,
    layers: u64,
    key_length: Option<u64>,
) -> Result<()> {
    let a = arch.key();
    let k = |name: &str| format!("{a}.{name}");
    let head_dim = key_length.unwrap_or(hidden / heads);
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("attention_bias".into(), json!(false));
    if arch == GgufArch::Gemma {
        c.insert("hidden_act".into(), json!("gelu_pytorch_tanh"));
        c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
        return Ok(());
    }
    c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
    // llama.cpp scales queries by 1/sqrt(hidden / heads) for the 27B models (Gemma 2: 46
    // layers, Gemma 3: 62) and by 1/sqrt(head_dim) otherwise; transformers by
    // 1/sqrt(query_pre_attn_scalar).
    let is_27b =
        (arch == GgufArch::Gemma2 && layers == 46) || (arch == GgufArch::Gemma3 && layers == 62);
    let scalar = if is_27b { hidden / heads } else { head_dim };
    c.insert("query_pre_attn_scalar".into(), json!(scalar));
    let window = file.opt_u64(&k("attention.sliding_window"))?;
    // llama.cpp's defaults: Gemma 2 slides over 4096 on even layers (pattern 2); Gemma 3 on
    // five of every six layers (pattern 6), and not at all when no window is written.
    let (window, pattern) = match arch {
        GgufArch::Gemma2 => (Some(window.unwrap_or(4096)), 2),
        _ => (window.filter(|&w| w > 0), 6),
    };
    // `attention.sliding_window_pattern`: a period, or one flag per layer (llama.cpp's
    // `load_swa_pattern` reads either).
    let pattern_key = k("attention.sliding_window_pattern");
    let (pattern, flags) = match file.get(&pattern_key).and_then(|v| v.as_array()) {
        Some(arr) => {
            let flags = arr
                .iter()
                .map(|v| v.as_bool().or(v.as_u64().map(|x| x != 0)))
                .collect::<Option<Vec<bool>>>()
                .filter(|f| f.len() as u64 == layers)
                .ok_or_else(|| GgufError::Metadata {
                    path: file.path().to_path_buf(),
                    key: pattern_key.clone(),
                    msg: format!("should hold one flag per layer ({layers})"),
                })?;
            (pattern, Some(flags))
        }
        None => (file.opt_u64(&pattern_key)?.unwrap_or(pattern), None),
    };
    c.insert("sliding_window".into(), json!(window));
    // llama.cpp's `set_swa_pattern`: layer il slides when il % pattern < pattern - 1.
    let types: Vec<&str> = (0..layers)
        .map(|il| {
            let slides = match &flags {
                Some(f) => f[il as usize],
                None => pattern > 0 && il % pattern < pattern - 1,
            };
            if window.is_some() && slides {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    c.insert("layer_types".into(), json!(types));
    let cap = |key: &str| -> Result<Json> {
        Ok(match file.opt_f64(&k(key))? {
            Some(v) if v != 0.0 => json!(v),
            _ => Json::Null,
        })
    };
    c.insert(
        "final_logit_softcapping".into(),
        cap("final_logit_softcapping")?,
    );
    if arch == GgufArch::Gemma2 {
        c.insert(
            "attn_logit_softcapping".into(),
            cap("attn_logit_softcapping")?,
        );
    } else {
        c.insert("attn_logit_softcapping".into(), Json::Null);
        c.insert("sliding_window_pattern".into(), json!(pattern));
        // The converter writes transformers' rope_local_base_freq as rope.freq_base_swa.
        let local = file.opt_f64(&k("rope.freq_base_swa"))?.unwrap_or(10000.0);
        c.insert("rope_local_base_freq".into(), json!(local));
    }
    Ok(())
}

/// Phi-3's config keys: the original context (`rope.scaling.original_context_length`), the
/// sliding window (0 is none, the converter's mark for Phi-4), a partial rotary factor from
/// `rope.dimension_count`, and LongRoPE from the `rope_factors_short` / `rope_factors_long`
/// tensors (`Phi3MiniModel.generate_extra_tensors`).
fn phi3_keys(
    file: &GgufFile,
    c: &mut Map<String, Json>,
    hidden: u64,
    heads: u64,
    context: Option<u64>,
) -> Result<()> {
    let orig = file
        .opt_u64("phi3.rope.scaling.original_context_length")?
        .or(context);
    if let Some(o) = orig {
        c.insert("original_max_position_embeddings".into(), json!(o));
    }
    let window = file
        .opt_u64("phi3.attention.sliding_window")?
        .filter(|&w| w > 0);
    c.insert("sliding_window".into(), json!(window));
    let head_dim = hidden / heads;
    let rope_dims = file
        .opt_u64("phi3.rope.dimension_count")?
        .unwrap_or(head_dim);
    if rope_dims != head_dim {
        c.insert(
            "partial_rotary_factor".into(),
            json!(rope_dims as f64 / head_dim as f64),
        );
    }
    let factors = |name: &str| -> Result<Option<Vec<f32>>> {
        file.tensor(name).map(|t| file.tensor_f32(t)).transpose()
    };
    match (
        factors("rope_factors_short.weight")?,
        factors("rope_factors_long.weight")?,
    ) {
        (Some(short), Some(long)) => {
            if short.len() != long.len() || short.len() as u64 != rope_dims / 2 {
                return Err(GgufError::Tensor {
                    path: file.path().to_path_buf(),
                    tensor: "rope_factors_short.weight".into(),
                    msg: format!(
                        "{} short and {} long factors for {rope_dims} rotary dims (want {} each)",
                        short.len(),
                        long.len(),
                        rope_dims / 2
                    ),
                });
            }
            c.insert(
                "rope_scaling".into(),
                json!({"type": "longrope", "rope_type": "longrope", "short_factor": short, "long_factor": long}),
            );
        }
        (None, None) => {}
        _ => {
            return Err(GgufError::Unsupported {
                path: file.path().to_path_buf(),
                msg: "the file holds one of rope_factors_short / rope_factors_long without the \
                      other; LongRoPE needs both"
                    .into(),
            })
        }
    }
    Ok(())
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
