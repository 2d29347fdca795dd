//! Random-weight Hugging Face folders of a named shape: the benchmark model for temper and
//! its peers alike (transformers loads them unchanged). Weights are bf16, linear layers and
//! embeddings drawn uniformly with standard deviation 0.02 (transformers' initializer_range),
//! norms 1 (Gemma's, stored as w in (1 + w), 0). Large models are written in shards of at most 5 GB with an index, as
//! `save_pretrained(max_shard_size="5GB")` does.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

use crate::adapter::write_atomic;
use crate::error::{io_err, ModelError, Result};

/// Which transformers class a shape is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    /// Qwen3ForCausalLM: per-head q/k norms, no q/k/v bias.
    Qwen3,
    /// Phi3ForCausalLM: fused qkv_proj and gate_up_proj.
    Phi3,
    /// GemmaForCausalLM: GeGLU, (1 + w) norms, scaled embeddings, tied.
    Gemma,
    /// Gemma2ForCausalLM: Gemma with sandwich norms, soft caps, alternating windows.
    Gemma2,
    /// Gemma3ForCausalLM (text): Gemma 2 with q/k norms and a local RoPE base, one global
    /// layer in six.
    Gemma3,
}

impl Family {
    fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma | Family::Gemma2 | Family::Gemma3)
    }
}

/// The geometry of a Llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    pub family: Family,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Per head; Qwen3's is not hidden / heads.
    pub head_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub rope_theta: f64,
    pub tie_embeddings: bool,
    /// Gemma 2 / 3: the sliding window of the local layers.
    pub sliding_window: Option<usize>,
}

/// The shapes `temper init-model --shape` knows.
pub const SHAPES: &[Shape] = &[
    Shape {
        name: "tiny",
        family: Family::Llama,
        hidden: 256,
        intermediate: 688,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        head_dim: 32,
        vocab: 2048,
        max_positions: 2048,
        rope_theta: 10000.0,
        tie_embeddings: false,
        sliding_window: None,
    },
    Shape {
        name: "llama2-7b",
        family: Family::Llama,
        hidden: 4096,
        intermediate: 11008,
        layers: 32,
        heads: 32,
        kv_heads: 32,
        head_dim: 128,
        vocab: 32000,
        max_positions: 4096,
        rope_theta: 10000.0,
        tie_embeddings: false,
        sliding_window: None,
    },
    Shape {
        name: "llama3-8b",
        family: Family::Llama,
        hidden: 4096,
        intermediate: 14336,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vocab: 128256,
        max_positions: 8192,
        rope_theta: 500000.0,
        tie_embeddings: false,
        sliding_window: None,
    },
    // Qwen3-8B's config.json.
    Shape {
        name: "qwen3-8b",
        family: Family::Qwen3,
        hidden: 4096,
        intermediate: 12288,
        layers: 36,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        vocab: 151936,
        max_positions: 40960,
        rope_theta: 1000000.0,
        tie_embeddings: false,
        sliding_window: None,
    },
    // A small Qwen3 for tests: head_dim 64 beside hidden / heads = 32, tied like Qwen3-0.6B.
    Shape {
        name: "qwen3-tiny",
        family: Family::Qwen3,
        hidden: 256,
        intermediate: 688,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        head_dim: 64,
        vocab: 2048,
        max_positions: 2048,
        rope_theta: 1000000.0,
        tie_embeddings: true,
        sliding_window: None,
    },
    // Phi-3-mini-4k's config.json (head_dim 96 = hidden / heads).
    Shape {
        name: "phi3-mini",
        family: Family::Phi3,
        hidden: 3072,
        intermediate: 8192,
        layers: 32,
        heads: 32,
        kv_heads: 32,
        head_dim: 96,
        vocab: 32064,
        max_positions: 4096,
        rope_theta: 10000.0,
        tie_embeddings: false,
        sliding_window: None,
    },
    Shape {
        name: "phi3-tiny",
        family: Family::Phi3,
        hidden: 256,
        intermediate: 688,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        head_dim: 32,
        vocab: 2048,
        max_positions: 2048,
        rope_theta: 10000.0,
        tie_embeddings: false,
        sliding_window: None,
    },
    // Gemma-7B's config.json.
    Shape {
        name: "gemma-7b",
        family: Family::Gemma,
        hidden: 3072,
        intermediate: 24576,
        layers: 28,
        heads: 16,
        kv_heads: 16,
        head_dim: 256,
        vocab: 256000,
        max_positions: 8192,
        rope_theta: 10000.0,
        tie_embeddings: true,
        sliding_window: None,
    },
    Shape {
        name: "gemma-tiny",
        family: Family::Gemma,
        hidden: 256,
        intermediate: 688,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        head_dim: 64,
        vocab: 2048,
        max_positions: 2048,
        rope_theta: 10000.0,
        tie_embeddings: true,
        sliding_window: None,
    },
    // Gemma-2-9B's config.json.
    Shape {
        name: "gemma2-9b",
        family: Family::Gemma2,
        hidden: 3584,
        intermediate: 14336,
        layers: 42,
        heads: 16,
        kv_heads: 8,
        head_dim: 256,
        vocab: 256000,
        max_positions: 8192,
        rope_theta: 10000.0,
        tie_embeddings: true,
        sliding_window: Some(4096),
    },
    Shape {
        name: "gemma2-tiny",
        family: Family::Gemma2,
        hidden: 256,
        intermediate: 688,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        head_dim: 64,
        vocab: 2048,
        max_positions: 2048,
        rope_theta: 10000.0,
        tie_embeddings: true,
        sliding_window: Some(512),
    },
    // Gemma-3-1B's config.json (the text-only Gemma 3).
    Shape {
        name: "gemma3-1b",
        family: Family::Gemma3,
        hidden: 1152,
        intermediate: 6912,
        layers: 26,
        heads: 4,
        kv_heads: 1,
        head_dim: 256,
        vocab: 262144,
        max_positions: 32768,
        rope_theta: 1000000.0,
        tie_embeddings: true,
        sliding_window: Some(512),
    },
    Shape {
        name: "gemma3-tiny",
        family: Family::Gemma3,
        hidden: 256,
        intermediate: 688,
        layers: 6,
        heads: 8,
        kv_heads: 4,
        head_dim: 64,
        vocab: 2048,
        max_positions: 2048,
        rope_theta: 1000000.0,
        tie_embeddings: true,
        sliding_window: Some(512),
    },
];

/// The resolved config.json of a built-in shape (tests of sizes and counts).
#[cfg(test)]
pub(crate) fn shape_config(name: &str) -> crate::config::ModelConfig {
    let shape = shape(name).expect("shape");
    let text = shape.config_json().to_string();
    crate::config::ModelConfig::from_json(&text, std::path::Path::new("config.json"))
        .expect("config")
}

/// The built-in shape of this name (`temper init-model --shape NAME`).
pub fn shape(name: &str) -> Option<&'static Shape> {
    SHAPES.iter().find(|s| s.name == name)
}

impl Shape {
    /// config.json as transformers writes it for the shape's class.
    pub fn config_json(&self) -> serde_json::Value {
        let (class, model_type, eps) = match self.family {
            Family::Llama => ("LlamaForCausalLM", "llama", 1e-5),
            Family::Qwen3 => ("Qwen3ForCausalLM", "qwen3", 1e-6),
            Family::Phi3 => ("Phi3ForCausalLM", "phi3", 1e-5),
            Family::Gemma => ("GemmaForCausalLM", "gemma", 1e-6),
            Family::Gemma2 => ("Gemma2ForCausalLM", "gemma2", 1e-6),
            Family::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text", 1e-6),
        };
        let mut c = serde_json::json!({
            "architectures": [class],
            "model_type": model_type,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "max_position_embeddings": self.max_positions,
            "rms_norm_eps": eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "initializer_range": 0.02,
            "torch_dtype": "bfloat16",
        });
        let Some(map) = c.as_object_mut() else {
            return c;
        };
        match self.family {
            Family::Llama | Family::Qwen3 => {}
            Family::Phi3 => {
                // Phi3Config derives head_dim from hidden / heads.
                map.remove("head_dim");
                map.remove("mlp_bias");
                map.remove("attention_bias");
                map.insert(
                    "original_max_position_embeddings".into(),
                    self.max_positions.into(),
                );
                map.insert("sliding_window".into(), serde_json::Value::Null);
            }
            Family::Gemma => {
                map.insert("hidden_act".into(), "gelu_pytorch_tanh".into());
            }
            Family::Gemma2 | Family::Gemma3 => {
                map.remove("hidden_act");
                map.remove("mlp_bias");
                map.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
                map.insert("query_pre_attn_scalar".into(), self.head_dim.into());
                map.insert(
                    "sliding_window".into(),
                    self.sliding_window
                        .map_or(serde_json::Value::Null, Into::into),
                );
                let gemma2 = self.family == Family::Gemma2;
                // Gemma 2: even layers slide; Gemma 3: all but every sixth.
                let types: Vec<&str> = (0..self.layers)
                    .map(|i| {
                        let global = if gemma2 { i % 2 == 1 } else { (i + 1) % 6 == 0 };
                        if global {
                            "full_attention"
                        } else {
                            "sliding_attention"
                        }
                    })
                    .collect();
                map.insert("layer_types".into(), serde_json::json!(types));
                map.insert(
                    "final_logit_softcapping".into(),
                    if gemma2 {
                        30.0.into()
                    } else {
                        serde_json::Value::Null
                    },
                );
                map.insert(
                    "attn_logit_softcapping".into(),
                    if gemma2 {
                        50.0.into()
                    } else {
                        serde_json::Value::Null
                    },
                );
                if !gemma2 {
                    map.insert("rope_local_base_freq".into(), 10000.0.into());
                    map.insert("sliding_window_pattern".into(), 6.into());
                }
            }
        }
        c
    }

    /// Every tensor: (name, shape, is_norm), in transformers' order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, bool)> {
        let (c, f, v) = (self.hidden, self.intermediate, self.vocab);
        let d = self.head_dim;
        let (q, kv) = (self.heads * d, self.kv_heads * d);
        let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, c], false)];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            t.push((format!("{p}.input_layernorm.weight"), vec![c], true));
            if self.family == Family::Phi3 {
                t.push((
                    format!("{p}.self_attn.qkv_proj.weight"),
                    vec![q + 2 * kv, c],
                    false,
                ));
            } else {
                t.push((format!("{p}.self_attn.q_proj.weight"), vec![q, c], false));
                t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, c], false));
                t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, c], false));
            }
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![c, q], false));
            if matches!(self.family, Family::Qwen3 | Family::Gemma3) {
                t.push((format!("{p}.self_attn.q_norm.weight"), vec![d], true));
                t.push((format!("{p}.self_attn.k_norm.weight"), vec![d], true));
            }
            t.push((
                format!("{p}.post_attention_layernorm.weight"),
                vec![c],
                true,
            ));
            if matches!(self.family, Family::Gemma2 | Family::Gemma3) {
                for norm in ["pre_feedforward_layernorm", "post_feedforward_layernorm"] {
                    t.push((format!("{p}.{norm}.weight"), vec![c], true));
                }
            }
            if self.family == Family::Phi3 {
                t.push((
                    format!("{p}.mlp.gate_up_proj.weight"),
                    vec![2 * f, c],
                    false,
                ));
            } else {
                t.push((format!("{p}.mlp.gate_proj.weight"), vec![f, c], false));
                t.push((format!("{p}.mlp.up_proj.weight"), vec![f, c], false));
            }
            t.push((format!("{p}.mlp.down_proj.weight"), vec![c, f], false));
        }
        t.push(("model.norm.weight".to_string(), vec![c], true));
        if !self.tie_embeddings {
            t.push(("lm_head.weight".to_string(), vec![v, c], false));
        }
        t
    }
}

/// bf16 bytes of `n` values: `norm` for norms (1, or Gemma's 0 in 1 + w), else uniform with
/// std 0.02, in parallel chunks each seeded from (seed, tensor index, chunk) so the result
/// does not depend on threads.
fn random_bf16(n: usize, norm: Option<f32>, seed: u64, index: usize) -> Vec<u8> {
    const CHUNK: usize = 1 << 20;
    let bound = 0.02f32 * 3f32.sqrt();
    let mut out = vec![0u8; n * 2];
    out.par_chunks_mut(CHUNK * 2)
        .enumerate()
        .for_each(|(ci, bytes)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((index as u64) << 32) ^ ci as u64);
            for b in bytes.chunks_exact_mut(2) {
                let x = match norm {
                    Some(v) => v,
                    None => rng.random_range(-bound..bound),
                };
                b.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes());
            }
        });
    out
}

/// Writes config.json, generation_config.json and the weights (sharded at 5 GB) into `dir`.
/// Returns the number of parameters.
pub fn write_random_model(shape: &Shape, dir: &Path, seed: u64) -> Result<usize> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cfg = serde_json::to_string_pretty(&shape.config_json())
        .map_err(|e| ModelError::Adapter(e.to_string()))?;
    write_atomic(&dir.join("config.json"), cfg.as_bytes())?;
    let gen = serde_json::json!({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0});
    write_atomic(
        &dir.join("generation_config.json"),
        gen.to_string().as_bytes(),
    )?;

    const SHARD_BYTES: usize = 5_000_000_000;
    let norm_value = if shape.family.is_gemma() { 0.0 } else { 1.0 };
    let tensors = shape.tensors();
    // Group tensors into shards in order.
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0;
    for (i, (_, s, _)) in tensors.iter().enumerate() {
        let bytes = s.iter().product::<usize>() * 2;
        if size + bytes > SHARD_BYTES && !shards.last().is_some_and(|v| v.is_empty()) {
            shards.push(vec![]);
            size = 0;
        }
        size += bytes;
        if let Some(last) = shards.last_mut() {
            last.push(i);
        }
    }
    let total = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut params = 0;
    let mut total_bytes = 0;
    for (si, members) in shards.iter().enumerate() {
        let file = if total == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", si + 1, total)
        };
        let data: Vec<(usize, Vec<u8>)> = members
            .iter()
            .map(|&i| {
                (
                    i,
                    random_bf16(
                        tensors[i].1.iter().product(),
                        tensors[i].2.then_some(norm_value),
                        seed,
                        i,
                    ),
                )
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = data
            .iter()
            .map(|(i, bytes)| {
                let (name, s, _) = &tensors[*i];
                TensorView::new(Dtype::BF16, s.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| ModelError::Adapter(format!("{name}: {e}")))
            })
            .collect::<Result<_>>()?;
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        let path = dir.join(&file);
        safetensors::tensor::serialize_to_file(views, Some(meta), &path).map_err(|e| {
            ModelError::Safetensors {
                path: path.clone(),
                msg: e.to_string(),
            }
        })?;
        for &i in members {
            weight_map.insert(tensors[i].0.clone(), file.clone());
            let n: usize = tensors[i].1.iter().product();
            params += n;
            total_bytes += n * 2;
        }
    }
    if total > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total_bytes}, "weight_map": weight_map});
        write_atomic(
            &dir.join("model.safetensors.index.json"),
            index.to_string().as_bytes(),
        )?;
    }
    Ok(params)
}
