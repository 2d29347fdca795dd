//! config.json -> [`ModelConfig`]: a serde struct mirroring the file, then the resolved
//! numbers the model code uses, with transformers' defaults filled in.

use std::path::Path;

use serde::Deserialize;
use temper_core::rope::RopeScaling;

use crate::error::{io_err, ModelError, Result};

/// The architectures temper runs: decoder-only, pre-norm, RoPE, SwiGLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    /// Qwen3 (dense): Qwen2 without q/k/v bias, with an RMSNorm over each query and key head.
    Qwen3,
}

/// config.json as Hugging Face writes it (the fields temper reads).
#[derive(Debug, Deserialize)]
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
}

impl ModelConfig {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Self::from_json(&text, &path)
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
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
            other => {
                return Err(bad(format!(
                    "model_type `{other}` is not supported; temper runs llama, mistral, qwen2 and qwen3"
                )))
            }
        };
        if let Some(act) = &f.hidden_act {
            if act != "silu" {
                return Err(bad(format!(
                    "hidden_act `{act}` is not supported; temper's MLP is SwiGLU (silu)"
                )));
            }
        }
        check_sizes(&f).map_err(bad)?;
        let heads = f.num_attention_heads;
        let kv_heads = f.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad(format!(
                "num_attention_heads {heads} must be a positive multiple of num_key_value_heads {kv_heads}"
            )));
        }
        // Qwen3Config's head_dim defaults to 128; the others derive it from hidden / heads.
        let head_dim = f.head_dim.unwrap_or(if arch == Arch::Qwen3 {
            128
        } else {
            f.hidden_size / heads
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
        let rope_params = f.rope_parameters.as_ref();
        let rope_theta = f
            .rope_theta
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10000.0);
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
            Some(v) => parse_rope_scaling(v, original).map_err(bad)?,
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
            tie_embeddings: f.tie_word_embeddings.unwrap_or(false),
            qkv_bias: f.attention_bias.unwrap_or(default_qkv_bias),
            qk_norm: arch == Arch::Qwen3,
            layer_windows,
            eos_token_ids: ids(&f.eos_token_id),
            bos_token_id: ids(&f.bos_token_id).first().copied(),
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
        let Some(scaling) = parse_rope_scaling(&v, original)? else {
            return Ok(());
        };
        let factor = match &scaling {
            RopeScaling::Linear { factor }
            | RopeScaling::Llama3 { factor, .. }
            | RopeScaling::Dynamic { factor, .. }
            | RopeScaling::Yarn { factor, .. } => *factor,
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

    /// Width of the query projection output.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Width of the key and value projection outputs.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
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
        Arch::Llama => vec![false; n],
        Arch::Mistral => vec![window.is_some(); n],
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

/// `rope_scaling` (or transformers 5's `rope_parameters`) of config.json; `original` is the
/// config's max_position_embeddings, the default original context of dynamic and YaRN.
fn parse_rope_scaling(
    v: &serde_json::Value,
    original: f64,
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
            let attention_factor = match (opt("attention_factor"), opt("mscale"), opt("mscale_all_dim")) {
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
        other => Err(format!(
            "rope_scaling type `{other}` is not supported; temper runs default, linear, dynamic, yarn and llama3"
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
}
