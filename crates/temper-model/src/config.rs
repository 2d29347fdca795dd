//! config.json -> [`ModelConfig`]: a serde struct mirroring the file, then the resolved
//! numbers the model code uses, with transformers' defaults filled in.

use std::path::Path;

use serde::Deserialize;
use temper_core::rope::RopeScaling;
use temper_core::AttnShape;

use crate::error::{io_err, ModelError, Result};

/// The architectures temper runs: decoder-only, pre-norm, RoPE, a gated MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    /// Qwen3 (dense): Qwen2 without q/k/v bias, with an RMSNorm over each query and key head.
    Qwen3,
    /// Phi-3 / Phi-3.5 / Phi-4-mini: q, k, v in one `qkv_proj`, gate and up in one
    /// `gate_up_proj`; optionally a partial rotary factor and LongRoPE.
    Phi3,
    /// Gemma: RMSNorm with (1 + w), embeddings times sqrt(hidden), GeGLU (tanh).
    Gemma,
    /// Gemma 2: Gemma with norms after attention and MLP too, soft-capped attention scores
    /// and logits, `query_pre_attn_scalar`, alternating sliding-window layers.
    Gemma2,
    /// Gemma 3 (text): Gemma 2 without the soft caps by default, with per-head q/k norms and
    /// a separate RoPE base for the sliding-window layers.
    Gemma3,
}

impl Arch {
    /// Gemma 1, 2 or 3.
    pub fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3)
    }
}

/// The MLP's gate activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpAct {
    /// SwiGLU: silu(gate) * up.
    Silu,
    /// GeGLU with the tanh approximation (`gelu_pytorch_tanh`): gelu(gate) * up.
    GeluTanh,
}

/// config.json as Hugging Face writes it (the fields temper reads).
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers 5 may nest rope settings here.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<serde_json::Value>,
    /// Qwen2 / Qwen3: the window applies only when this is true ...
    use_sliding_window: Option<bool>,
    /// ... and only to layers from this index on (when `layer_types` is absent) ...
    max_window_layers: Option<usize>,
    /// ... or to the layers marked `sliding_attention` here.
    layer_types: Option<Vec<String>>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    /// Gemma 2 / 3 name the MLP's activation here.
    hidden_activation: Option<String>,
    /// Phi: the share of each head's dims that RoPE rotates.
    partial_rotary_factor: Option<f64>,
    /// Phi-3 with LongRoPE: the context the model was pretrained for.
    original_max_position_embeddings: Option<usize>,
    /// Gemma 2 / 3: attention scores are scaled by query_pre_attn_scalar^-0.5.
    query_pre_attn_scalar: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    final_logit_softcapping: Option<f64>,
    /// Gemma 3 (older files): the RoPE base of the sliding-window layers ...
    rope_local_base_freq: Option<f64>,
    /// ... and every n-th layer is global, the others sliding.
    sliding_window_pattern: Option<usize>,
    /// Gemma 3: bidirectional attention (an encoder use) is not a causal LM.
    use_bidirectional_attention: Option<bool>,
}

/// The resolved configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub model_type: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// An RMSNorm (weight of head_dim) over each query and key head before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Per layer: the sliding attention window (a query sees itself and the `w - 1` keys
    /// before it), None for full causal attention.
    pub layer_windows: Vec<Option<usize>>,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    /// The MLP's activation.
    pub mlp_act: MlpAct,
    /// Every RMSNorm weight is applied as (1 + w) (Gemma).
    pub norm_plus_one: bool,
    /// Embeddings are multiplied by sqrt(hidden), rounded to the compute dtype (Gemma).
    pub embed_scale: bool,
    /// An RMSNorm on the attention output and on the MLP output before each residual add
    /// (Gemma 2 / 3: post_attention_layernorm and post_feedforward_layernorm).
    pub sandwich_norms: bool,
    /// The factor on q.k before the softmax (1/sqrt(head_dim) unless query_pre_attn_scalar).
    pub attn_scale: f64,
    /// Attention scores soft-capped at this value (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Logits soft-capped at this value (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Dims of each head that RoPE rotates (head_dim unless a partial rotary factor).
    pub rope_dims: usize,
    /// The RoPE base of the layers marked in `layer_local_rope` (Gemma 3's local layers).
    pub local_rope_theta: Option<f64>,
    /// Per layer: uses `local_rope_theta` (unscaled) instead of rope_theta and rope_scaling.
    pub layer_local_rope: Vec<bool>,
    /// q/k/v and gate/up are single fused projections (Phi-3's qkv_proj and gate_up_proj).
    pub fused_proj: bool,
}

impl ModelConfig {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Self::from_json(&text, &path)
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        if let Ok(raw) = serde_json::from_str::<serde_json::Value>(text) {
            if raw.get("model_type").and_then(|v| v.as_str()) == Some("gemma3")
                && raw.get("text_config").is_some()
            {
                return Err(ModelError::Config {
                    path: path.to_path_buf(),
                    msg: "model_type gemma3 is Gemma 3's image-and-text model; temper runs the \
                          text model (Gemma3ForCausalLM, model_type gemma3_text)"
                        .into(),
                });
            }
        }
        let f: ConfigFile = serde_json::from_str(text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            what: "a model config",
            source,
        })?;
        let bad = |msg: String| ModelError::Config {
            path: path.to_path_buf(),
            msg,
        };
        let model_type = f
            .model_type
            .clone()
            .or_else(|| {
                f.architectures
                    .as_ref()
                    .and_then(|a| a.first())
                    .map(|a| a.to_lowercase())
            })
            .unwrap_or_default();
        let arch = match model_type.as_str() {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "phi3" => Arch::Phi3,
            "gemma" => Arch::Gemma,
            "gemma2" => Arch::Gemma2,
            "gemma3_text" => Arch::Gemma3,
            other => {
                return Err(bad(format!(
                "model_type `{other}` is not supported; temper runs llama, mistral, qwen2, qwen3, \
                     phi3, gemma, gemma2 and gemma3_text"
            )))
            }
        };
        let mlp_act = mlp_act(&f, arch).map_err(bad)?;
        if f.use_bidirectional_attention == Some(true) {
            return Err(bad(
                "use_bidirectional_attention is true: temper trains causal language models".into(),
            ));
        }
        check_sizes(&f).map_err(bad)?;
        let heads = f.num_attention_heads;
        let kv_heads = f.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad(format!(
                "num_attention_heads {heads} must be a positive multiple of num_key_value_heads {kv_heads}"
            )));
        }
        // Qwen3Config's head_dim defaults to 128, Gemma's to 256; the others derive it from
        // hidden / heads.
        let head_dim = f.head_dim.unwrap_or(match arch {
            Arch::Qwen3 => 128,
            a if a.is_gemma() => 256,
            _ => f.hidden_size / heads,
        });
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "head_dim {head_dim} must be even and positive for RoPE"
            )));
        }
        let layer_windows = layer_windows(&f, arch).map_err(bad)?;
        // Sizes are each bounded, but the projections' widths are products of two of them.
        if heads * head_dim > MAX_PROJECTION {
            return Err(bad(format!(
                "num_attention_heads {heads} x head_dim {head_dim} is more than temper accepts \
                 ({MAX_PROJECTION}); the file is damaged or not a model config"
            )));
        }
        // transformers 5 keeps rope settings in `rope_parameters`; older files use rope_theta + rope_scaling.
        // Gemma 3 in transformers 5 keeps one set per layer type.
        let (rope_params, local_params) = match f.rope_parameters.as_ref() {
            Some(p) if p.get("full_attention").is_some() => {
                (p.get("full_attention"), p.get("sliding_attention"))
            }
            other => (other, None),
        };
        let default_theta = if arch == Arch::Gemma3 { 1e6 } else { 10000.0 };
        let rope_theta = f
            .rope_theta
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(default_theta);
        // Zero or negative values give NaN from the first step on: refuse them here.
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(bad(format!(
                "rope_theta is {rope_theta}; it must be a positive number (Llama uses 10000 or 500000)"
            )));
        }
        let rms_eps = f.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_eps.is_finite() && rms_eps > 0.0 && (rms_eps as f32) > 0.0) {
            return Err(bad(format!(
                "rms_norm_eps is {rms_eps}; it must be a small positive number such as 1e-5 or 1e-6"
            )));
        }
        let scaling_json = f.rope_scaling.as_ref().or(rope_params);
        let original = f.max_position_embeddings.unwrap_or(2048) as f64;
        let rope_scaling = match scaling_json {
            None => None,
            Some(v) => parse_rope_scaling(v, original, &f).map_err(bad)?,
        };
        let partial = f
            .partial_rotary_factor
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("partial_rotary_factor"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(1.0);
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(bad(format!(
                "partial_rotary_factor is {partial}; it must be in (0, 1]"
            )));
        }
        // transformers: dim = int(head_dim * partial_rotary_factor)
        let rope_dims = (head_dim as f64 * partial) as usize;
        if rope_dims == 0 || !rope_dims.is_multiple_of(2) {
            return Err(bad(format!(
                "partial_rotary_factor {partial} of head_dim {head_dim} rotates {rope_dims} dims; \
                 RoPE needs an even, positive number"
            )));
        }
        if let Some(RopeScaling::LongRope { short_factor, .. }) = &rope_scaling {
            if short_factor.len() != rope_dims / 2 {
                return Err(bad(format!(
                    "rope_scaling longrope has {} factors; the {rope_dims} rotated dims need {}",
                    short_factor.len(),
                    rope_dims / 2
                )));
            }
        }
        let local_rope_theta = if arch == Arch::Gemma3 {
            let theta = local_params
                .and_then(|p| p.get("rope_theta"))
                .and_then(|v| v.as_f64())
                .or(f.rope_local_base_freq)
                .unwrap_or(10000.0);
            if !(theta.is_finite() && theta > 0.0) {
                return Err(bad(format!(
                    "rope_local_base_freq is {theta}; it must be a positive number"
                )));
            }
            if let Some(kind) = local_params
                .and_then(|p| p.get("rope_type"))
                .and_then(|v| v.as_str())
                .filter(|k| *k != "default")
            {
                return Err(bad(format!(
                    "rope_parameters.sliding_attention has rope_type `{kind}`; temper scales only \
                     the global layers' RoPE"
                )));
            }
            Some(theta)
        } else {
            None
        };
        let layer_local_rope = if local_rope_theta.is_some() {
            sliding_layer_types(&f, arch).map_err(bad)?
        } else {
            vec![false; f.num_hidden_layers]
        };
        let softcap = |key: &str, v: Option<f64>| -> std::result::Result<Option<f32>, String> {
            match v {
                Some(c) if !(c.is_finite() && c > 0.0) => Err(format!(
                    "{key} is {c}; it must be a positive number or null"
                )),
                other => Ok(other.map(|c| c as f32)),
            }
        };
        // Gemma2Config's defaults; the field is written explicitly (null when off) by
        // transformers, so absence means the class default.
        let raw: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let gemma2_default = |key: &str, v: Option<f64>, default: f64| {
            if arch == Arch::Gemma2 && raw.get(key).is_none() {
                Some(default)
            } else {
                v
            }
        };
        let attn_softcap = if arch.is_gemma() && arch != Arch::Gemma {
            softcap(
                "attn_logit_softcapping",
                gemma2_default("attn_logit_softcapping", f.attn_logit_softcapping, 50.0),
            )
            .map_err(bad)?
        } else {
            None
        };
        let final_softcap = if arch.is_gemma() && arch != Arch::Gemma {
            softcap(
                "final_logit_softcapping",
                gemma2_default("final_logit_softcapping", f.final_logit_softcapping, 30.0),
            )
            .map_err(bad)?
        } else {
            None
        };
        let attn_scale = match arch {
            Arch::Gemma2 | Arch::Gemma3 => {
                let s = f.query_pre_attn_scalar.unwrap_or(256.0);
                if !(s.is_finite() && s > 0.0) {
                    return Err(bad(format!(
                        "query_pre_attn_scalar is {s}; it must be a positive number"
                    )));
                }
                1.0 / s.sqrt()
            }
            _ => 1.0 / (head_dim as f64).sqrt(),
        };
        let default_qkv_bias = arch == Arch::Qwen2;
        let ids = |v: &Option<serde_json::Value>| -> Vec<u32> {
            match v {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
                }
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect(),
                _ => vec![],
            }
        };
        Ok(ModelConfig {
            arch,
            model_type,
            hidden: f.hidden_size,
            intermediate: f.intermediate_size,
            layers: f.num_hidden_layers,
            heads,
            kv_heads,
            head_dim,
            vocab: f.vocab_size,
            rms_eps: rms_eps as f32,
            rope_theta,
            rope_scaling,
            max_positions: f.max_position_embeddings.unwrap_or(2048),
            tie_embeddings: f.tie_word_embeddings.unwrap_or(arch.is_gemma()),
            qkv_bias: f.attention_bias.unwrap_or(default_qkv_bias),
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            layer_windows,
            eos_token_ids: ids(&f.eos_token_id),
            bos_token_id: ids(&f.bos_token_id).first().copied(),
            mlp_act,
            norm_plus_one: arch.is_gemma(),
            embed_scale: arch.is_gemma(),
            sandwich_norms: matches!(arch, Arch::Gemma2 | Arch::Gemma3),
            attn_scale,
            attn_softcap,
            final_softcap,
            rope_dims,
            local_rope_theta,
            layer_local_rope,
            fused_proj: arch == Arch::Phi3,
        })
    }

    /// Extends the context on purpose: `rope_scaling` as transformers' config.json writes it
    /// (`{"rope_type": "linear" | "dynamic" | "yarn" | "llama3", "factor": F, ...}`), or just
    /// the type, with the factor then taken from `positions` (the longest sequence to train)
    /// over max_position_embeddings, at least 1. The model then accepts positions up to
    /// max_position_embeddings * factor.
    pub fn apply_rope_scaling(
        &mut self,
        v: &serde_json::Value,
        positions: usize,
    ) -> std::result::Result<(), String> {
        let original = self.max_positions as f64;
        let mut v = match v {
            serde_json::Value::String(kind) => serde_json::json!({ "rope_type": kind }),
            other => other.clone(),
        };
        let Some(map) = v.as_object_mut() else {
            return Err(format!(
                "rope_scaling must be a type (linear, dynamic, yarn, llama3) or a mapping like config.json's, got {v}"
            ));
        };
        if !map.contains_key("factor") {
            let factor = (positions as f64 / original).max(1.0);
            map.insert("factor".into(), serde_json::json!(factor));
        }
        if self.rope_scaling.is_some() && self.arch == Arch::Phi3 {
            return Err(
                "this model's config.json already scales RoPE (longrope); rope_scaling cannot replace it"
                    .into(),
            );
        }
        let Some(scaling) = parse_rope_scaling(&v, original, &ConfigFile::default())? else {
            return Ok(());
        };
        let factor = match &scaling {
            RopeScaling::Linear { factor }
            | RopeScaling::Llama3 { factor, .. }
            | RopeScaling::Dynamic { factor, .. }
            | RopeScaling::Yarn { factor, .. } => *factor,
            RopeScaling::LongRope { .. } => return Err(
                "longrope needs the model's own short and long factors; it comes from config.json"
                    .into(),
            ),
        };
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(format!(
                "rope_scaling factor must be at least 1, got {factor}"
            ));
        }
        self.max_positions = self.max_positions.max((original * factor).ceil() as usize);
        self.rope_scaling = Some(scaling);
        Ok(())
    }

    /// Layer `l`'s sliding attention window, None when it attends to every earlier token.
    pub fn window(&self, l: usize) -> Option<usize> {
        self.layer_windows.get(l).copied().flatten()
    }

    /// The linear layers of each decoder layer, as PEFT names them for this family.
    pub fn linears(&self) -> &'static [crate::lora::Target] {
        if self.fused_proj {
            &crate::lora::Target::FUSED
        } else {
            &crate::lora::Target::ALL
        }
    }

    /// Layer `l`'s RoPE base is the local one (Gemma 3's sliding-window layers).
    pub fn local_rope(&self, l: usize) -> bool {
        self.layer_local_rope.get(l).copied().unwrap_or(false)
    }

    /// Width of the query projection output.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Width of the key and value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// The head layout the attention ops take.
    pub fn attn_shape(&self) -> AttnShape {
        AttnShape::new(self.heads, self.kv_heads, self.head_dim)
    }
}

/// The largest value temper accepts for each size in config.json, far above any released
/// model (Llama 3.1 405B: 126 layers, hidden 16384, intermediate 53248, vocab 128256), so
/// that every product of sizes (weights, activations, memory plans) fits in 64 bits.
pub const SIZE_LIMITS: [(&str, usize); 7] = [
    ("num_hidden_layers", 1 << 12),
    ("hidden_size", 1 << 17),
    ("intermediate_size", 1 << 20),
    ("num_attention_heads", 1 << 12),
    ("num_key_value_heads", 1 << 12),
    ("head_dim", 1 << 12),
    ("vocab_size", 1 << 23),
];

/// The widest query projection accepted (num_attention_heads x head_dim).
pub const MAX_PROJECTION: usize = 1 << 18;

/// The largest `max_position_embeddings` accepted (16M positions).
pub const MAX_POSITIONS_LIMIT: usize = 1 << 24;

/// Every size is positive and within [`SIZE_LIMITS`], before anything is sized by it.
fn check_sizes(f: &ConfigFile) -> std::result::Result<(), String> {
    let values = [
        Some(f.num_hidden_layers),
        Some(f.hidden_size),
        Some(f.intermediate_size),
        Some(f.num_attention_heads),
        f.num_key_value_heads,
        f.head_dim,
        Some(f.vocab_size),
    ];
    for ((key, limit), value) in SIZE_LIMITS.iter().zip(values) {
        let Some(v) = value else { continue };
        if v == 0 {
            return Err(format!("{key} is 0; it must be at least 1"));
        }
        if v > *limit {
            return Err(format!(
                "{key} is {v}, more than temper accepts ({limit}); the file is damaged or not a model config"
            ));
        }
    }
    if let Some(p) = f.max_position_embeddings {
        if p == 0 || p > MAX_POSITIONS_LIMIT {
            return Err(format!(
                "max_position_embeddings is {p}; it must be between 1 and {MAX_POSITIONS_LIMIT}"
            ));
        }
    }
    Ok(())
}

/// Each layer's sliding window as transformers applies it: Mistral windows every layer when
/// `sliding_window` is set; Qwen2 and Qwen3 only with `use_sliding_window`, and then the layers
/// that `layer_types` marks `sliding_attention` (or, without it, those from
/// `max_window_layers` on). Llama has none.
fn layer_windows(f: &ConfigFile, arch: Arch) -> std::result::Result<Vec<Option<usize>>, String> {
    let n = f.num_hidden_layers;
    let window = match f.sliding_window.as_ref() {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(w) if w > 0 => Some(w as usize),
            _ => {
                return Err(format!(
                    "sliding_window must be a positive integer or null, got {v}"
                ))
            }
        },
    };
    let windowed: Vec<bool> = match arch {
        Arch::Llama | Arch::Gemma => vec![false; n],
        Arch::Mistral | Arch::Phi3 => vec![window.is_some(); n],
        Arch::Gemma2 | Arch::Gemma3 => {
            // Gemma2Config / Gemma3TextConfig's default window.
            let window = window.or(Some(4096));
            let sliding = sliding_layer_types(f, arch)?;
            return Ok(sliding
                .into_iter()
                .map(|s| if s { window } else { None })
                .collect());
        }
        Arch::Qwen2 | Arch::Qwen3 => {
            if !f.use_sliding_window.unwrap_or(false) || window.is_none() {
                vec![false; n]
            } else if let Some(types) = &f.layer_types {
                if types.len() != n {
                    return Err(format!(
                        "layer_types has {} entries for {n} layers (num_hidden_layers)",
                        types.len()
                    ));
                }
                types.iter().map(|t| t == "sliding_attention").collect()
            } else {
                let from = f.max_window_layers.unwrap_or(28);
                (0..n).map(|l| l >= from).collect()
            }
        }
    };
    Ok(windowed
        .into_iter()
        .map(|w| if w { window } else { None })
        .collect())
}

/// Which layers are sliding-window layers in Gemma 2 / 3: `layer_types` when the file has
/// it, else Gemma 2's alternation (even layers slide) or Gemma 3's pattern (every
/// `sliding_window_pattern`-th layer is global, default 6), as their config classes derive it.
fn sliding_layer_types(f: &ConfigFile, arch: Arch) -> std::result::Result<Vec<bool>, String> {
    let n = f.num_hidden_layers;
    if let Some(types) = &f.layer_types {
        if types.len() != n {
            return Err(format!(
                "layer_types has {} entries for {n} layers (num_hidden_layers)",
                types.len()
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(format!(
                    "layer_types holds `{other}`; temper knows sliding_attention and full_attention"
                )),
            })
            .collect();
    }
    let pattern = match arch {
        Arch::Gemma2 => 2,
        _ => f.sliding_window_pattern.unwrap_or(6),
    };
    if pattern == 0 {
        return Err("sliding_window_pattern is 0; it must be at least 1".into());
    }
    Ok((0..n).map(|i| !(i + 1).is_multiple_of(pattern)).collect())
}

/// The MLP activation config.json names: SwiGLU (silu) for the Llama-style families and
/// Phi-3, GeGLU with tanh for Gemma (whose first releases wrote `gelu` meaning the tanh
/// approximation, as transformers reads it).
fn mlp_act(f: &ConfigFile, arch: Arch) -> std::result::Result<MlpAct, String> {
    if arch.is_gemma() {
        let (key, act) = match arch {
            Arch::Gemma => ("hidden_act", f.hidden_act.as_deref()),
            _ => ("hidden_activation", f.hidden_activation.as_deref()),
        };
        return match act {
            None | Some("gelu_pytorch_tanh") => Ok(MlpAct::GeluTanh),
            Some("gelu") if arch == Arch::Gemma => Ok(MlpAct::GeluTanh),
            Some(other) => Err(format!(
                "{key} `{other}` is not supported for {arch:?}; temper runs gelu_pytorch_tanh"
            )),
        };
    }
    match f.hidden_act.as_deref() {
        None | Some("silu") => Ok(MlpAct::Silu),
        Some(other) => Err(format!(
            "hidden_act `{other}` is not supported; temper's MLP for this family is SwiGLU (silu)"
        )),
    }
}

/// `rope_scaling` (or transformers 5's `rope_parameters`) of config.json; `original` is the
/// config's max_position_embeddings, the default original context of dynamic and YaRN.
fn parse_rope_scaling(
    v: &serde_json::Value,
    original: f64,
    f: &ConfigFile,
) -> std::result::Result<Option<RopeScaling>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |key: &str| -> std::result::Result<f64, String> {
        v.get(key)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| format!("rope_scaling of type `{kind}` needs a number `{key}`"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        })),
        "dynamic" => Ok(Some(RopeScaling::Dynamic {
            factor: num("factor")?,
            original_max_position_embeddings: original,
        })),
        "yarn" => {
            let factor = num("factor")?;
            let opt = |key: &str| v.get(key).and_then(|x| x.as_f64());
            let attention_factor = match (
                opt("attention_factor"),
                opt("mscale"),
                opt("mscale_all_dim"),
            ) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                    RopeScaling::yarn_mscale(factor, m) / RopeScaling::yarn_mscale(factor, all)
                }
                _ => RopeScaling::yarn_mscale(factor, 1.0),
            };
            Ok(Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: opt("original_max_position_embeddings")
                    .unwrap_or(original),
                beta_fast: opt("beta_fast").unwrap_or(32.0),
                beta_slow: opt("beta_slow").unwrap_or(1.0),
                attention_factor,
                truncate: v.get("truncate").and_then(|x| x.as_bool()).unwrap_or(true),
            }))
        }
        // Phi-3's LongRoPE ("su" in its first releases): short factors up to the original
        // context, long factors past it, cos/sin scaled by the attention factor.
        "longrope" | "su" => {
            let factors = |key: &str| -> std::result::Result<Vec<f64>, String> {
                let list = v
                    .get(key)
                    .and_then(|x| x.as_array())
                    .ok_or_else(|| format!("rope_scaling of type `{kind}` needs a list `{key}`"))?;
                list.iter()
                    .map(|x| {
                        x.as_f64()
                            .filter(|x| x.is_finite() && *x > 0.0)
                            .ok_or_else(|| {
                                format!("rope_scaling `{key}` holds {x}, not a positive number")
                            })
                    })
                    .collect()
            };
            let (short_factor, long_factor) = (factors("short_factor")?, factors("long_factor")?);
            if short_factor.len() != long_factor.len() {
                return Err(format!(
                    "rope_scaling has {} short and {} long factors; they must match",
                    short_factor.len(),
                    long_factor.len()
                ));
            }
            let pretrained = v
                .get("original_max_position_embeddings")
                .and_then(|x| x.as_f64())
                .or(f.original_max_position_embeddings.map(|x| x as f64))
                .unwrap_or(original);
            if !(pretrained.is_finite() && pretrained >= 1.0) {
                return Err(format!(
                    "original_max_position_embeddings is {pretrained}; it must be at least 1"
                ));
            }
            // transformers: factor = max_position_embeddings / original when not given, and
            // attention_factor = sqrt(1 + ln(factor) / ln(original)) past 1.
            let factor = v
                .get("factor")
                .and_then(|x| x.as_f64())
                .unwrap_or(original / pretrained);
            let attention_factor = match v.get("attention_factor").and_then(|x| x.as_f64()) {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / pretrained.ln()).sqrt(),
            };
            Ok(Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: pretrained,
                attention_factor,
            }))
        }
        other => Err(format!(
            "rope_scaling type `{other}` is not supported; temper runs default, linear, dynamic, \
             yarn, llama3 and longrope"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(json: serde_json::Value) -> std::result::Result<ModelConfig, String> {
        ModelConfig::from_json(&json.to_string(), Path::new("config.json"))
            .map_err(|e| e.to_string())
    }

    fn base(model_type: &str) -> serde_json::Value {
        serde_json::json!({
            "model_type": model_type,
            "hidden_size": 5120,
            "intermediate_size": 14336,
            "num_hidden_layers": 4,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 131072,
            "max_position_embeddings": 131072,
        })
    }

    #[test]
    fn mistral_nemo_keeps_its_head_dim_and_windows_every_layer() {
        let mut j = base("mistral");
        j["head_dim"] = 128.into();
        j["sliding_window"] = 4096.into();
        let c = resolve(j.clone()).unwrap();
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (128, 4096, 1024));
        assert_eq!(c.layer_windows, vec![Some(4096); 4]);
        j["sliding_window"] = serde_json::Value::Null;
        assert_eq!(resolve(j.clone()).unwrap().window(0), None);
        j["sliding_window"] = 0.into();
        assert!(resolve(j).unwrap_err().contains("sliding_window"));
    }

    #[test]
    fn qwen3_has_qk_norms_no_bias_and_head_dim_128_by_default() {
        let c = resolve(base("qwen3")).unwrap();
        assert!(c.qk_norm && !c.qkv_bias);
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.layer_windows, vec![None; 4]);
        let c = resolve(base("qwen2")).unwrap();
        assert!(!c.qk_norm && c.qkv_bias);
        assert_eq!(c.head_dim, 160);
    }

    #[test]
    fn qwen_windows_follow_use_sliding_window_and_layer_types() {
        let mut j = base("qwen3");
        j["sliding_window"] = 64.into();
        assert_eq!(
            resolve(j.clone()).unwrap().window(3),
            None,
            "off by default"
        );
        j["use_sliding_window"] = true.into();
        j["max_window_layers"] = 2.into();
        assert_eq!(
            resolve(j.clone()).unwrap().layer_windows,
            vec![None, None, Some(64), Some(64)]
        );
        j["layer_types"] = serde_json::json!([
            "sliding_attention",
            "full_attention",
            "sliding_attention",
            "full_attention"
        ]);
        assert_eq!(
            resolve(j.clone()).unwrap().layer_windows,
            vec![Some(64), None, Some(64), None]
        );
        j["layer_types"] = serde_json::json!(["full_attention"]);
        assert!(resolve(j).unwrap_err().contains("layer_types"));
    }

    #[test]
    fn phi3_reads_longrope_as_its_releases_write_it() {
        // Phi-3-mini-128k style: rope_scaling with type, top-level original context.
        let mut j = base("phi3");
        j["hidden_size"] = 3072.into();
        j["num_attention_heads"] = 32.into();
        j["num_key_value_heads"] = 32.into();
        j["max_position_embeddings"] = 131072.into();
        j["original_max_position_embeddings"] = 4096.into();
        j["sliding_window"] = 262144.into();
        let factors: Vec<f64> = (0..48).map(|i| 1.0 + i as f64 * 0.1).collect();
        j["rope_scaling"] = serde_json::json!({
            "type": "longrope", "short_factor": factors, "long_factor": factors,
        });
        let c = resolve(j.clone()).unwrap();
        assert!(c.fused_proj);
        assert_eq!((c.head_dim, c.rope_dims), (96, 96));
        assert_eq!(c.layer_windows, vec![Some(262144); 4]);
        let Some(RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        }) = c.rope_scaling
        else {
            panic!("longrope expected, got {:?}", c.rope_scaling);
        };
        assert_eq!(original_max_position_embeddings, 4096.0);
        let want = (1.0 + (32.0f64).ln() / (4096.0f64).ln()).sqrt();
        assert!((attention_factor - want).abs() < 1e-12);
        // Phi-4-mini: a partial rotary factor; the factors cover the rotated dims only.
        j["partial_rotary_factor"] = 0.75.into();
        assert!(resolve(j.clone())
            .unwrap_err()
            .contains("72 rotated dims need 36"));
        let factors: Vec<f64> = vec![1.0; 36];
        j["rope_scaling"]["short_factor"] = serde_json::json!(factors);
        j["rope_scaling"]["long_factor"] = serde_json::json!(factors);
        assert_eq!(resolve(j).unwrap().rope_dims, 72);
    }

    #[test]
    fn phi3_adapters_name_the_fused_modules() {
        use crate::lora::{resolve_targets, Target};
        let c = resolve(base("phi3")).unwrap();
        assert_eq!(
            resolve_targets(&c, &Target::ALL).unwrap(),
            Target::FUSED.to_vec()
        );
        assert_eq!(
            resolve_targets(&c, &[Target::Qkv, Target::Down]).unwrap(),
            vec![Target::Down, Target::Qkv]
        );
        let err = resolve_targets(&c, &[Target::Q]).unwrap_err();
        assert!(err.contains("qkv_proj") && err.contains("q_proj"), "{err}");
        let llama = resolve(base("llama")).unwrap();
        assert!(resolve_targets(&llama, &[Target::GateUp]).is_err());
    }

    #[test]
    fn gemma2_defaults_to_its_soft_caps_and_alternating_windows() {
        let mut j = base("gemma2");
        j["head_dim"] = 256.into();
        let c = resolve(j.clone()).unwrap();
        assert_eq!((c.attn_softcap, c.final_softcap), (Some(50.0), Some(30.0)));
        assert_eq!(c.layer_windows, vec![Some(4096), None, Some(4096), None]);
        assert!(c.norm_plus_one && c.embed_scale && c.sandwich_norms && c.tie_embeddings);
        assert_eq!(c.mlp_act, MlpAct::GeluTanh);
        assert_eq!(c.attn_scale, 1.0 / 16.0); // query_pre_attn_scalar 256
        j["final_logit_softcapping"] = serde_json::Value::Null;
        j["query_pre_attn_scalar"] = 144.into();
        let c = resolve(j.clone()).unwrap();
        assert_eq!(c.final_softcap, None);
        assert_eq!(c.attn_scale, 1.0 / 12.0);
        j["hidden_activation"] = "relu".into();
        assert!(resolve(j).unwrap_err().contains("hidden_activation"));
    }

    #[test]
    fn gemma3_reads_old_and_new_rope_layouts() {
        // Gemma-3-1B's config.json (transformers 4.5x).
        let mut j = base("gemma3_text");
        j["num_hidden_layers"] = 7.into();
        j["rope_theta"] = 1000000.0.into();
        j["rope_local_base_freq"] = 10000.0.into();
        j["sliding_window"] = 512.into();
        j["sliding_window_pattern"] = 6.into();
        j["rope_scaling"] = serde_json::Value::Null;
        let c = resolve(j).unwrap();
        assert_eq!((c.rope_theta, c.local_rope_theta), (1e6, Some(1e4)));
        let global = [false, false, false, false, false, true, false];
        assert_eq!(
            c.layer_windows,
            global
                .iter()
                .map(|&g| if g { None } else { Some(512) })
                .collect::<Vec<_>>()
        );
        assert_eq!(
            c.layer_local_rope,
            global.iter().map(|g| !g).collect::<Vec<_>>()
        );
        assert!(c.qk_norm && c.attn_softcap.is_none() && c.final_softcap.is_none());
        // transformers 5: one rope set per layer type.
        let mut j = base("gemma3_text");
        j["layer_types"] = serde_json::json!([
            "sliding_attention",
            "full_attention",
            "sliding_attention",
            "full_attention"
        ]);
        j["rope_parameters"] = serde_json::json!({
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        });
        let c = resolve(j).unwrap();
        assert_eq!((c.rope_theta, c.local_rope_theta), (1e6, Some(1e4)));
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        assert_eq!(c.layer_local_rope, vec![true, false, true, false]);
    }

    #[test]
    fn gemma_legacy_gelu_is_the_tanh_approximation_and_multimodal_gemma3_is_refused() {
        let mut j = base("gemma");
        j["hidden_act"] = "gelu".into();
        let c = resolve(j).unwrap();
        assert_eq!((c.mlp_act, c.head_dim), (MlpAct::GeluTanh, 256));
        assert_eq!(c.layer_windows, vec![None; 4]);
        let err = resolve(serde_json::json!({
            "model_type": "gemma3",
            "text_config": {"hidden_size": 2560},
        }))
        .unwrap_err();
        assert!(err.contains("gemma3_text"), "{err}");
    }
}
