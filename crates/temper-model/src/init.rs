//! Random-weight Hugging Face folders of a named shape: the benchmark model for temper and
//! its peers alike (transformers loads them unchanged). Weights are bf16, linear layers and
//! embeddings drawn uniformly with standard deviation 0.02 (transformers' initializer_range),
//! norms 1. Large models are written in shards of at most 5 GB with an index, as
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
    },
];

pub fn shape(name: &str) -> Option<&'static Shape> {
    SHAPES.iter().find(|s| s.name == name)
}

impl Shape {
    /// config.json as transformers writes it for LlamaForCausalLM or Qwen3ForCausalLM.
    pub fn config_json(&self) -> serde_json::Value {
        let (class, model_type, eps) = match self.family {
            Family::Llama => ("LlamaForCausalLM", "llama", 1e-5),
            Family::Qwen3 => ("Qwen3ForCausalLM", "qwen3", 1e-6),
        };
        serde_json::json!({
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
        })
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
            t.push((format!("{p}.self_attn.q_proj.weight"), vec![q, c], false));
            t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, c], false));
            t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, c], false));
            t.push((format!("{p}.self_attn.o_proj.weight"), vec![c, q], false));
            if self.family == Family::Qwen3 {
                t.push((format!("{p}.self_attn.q_norm.weight"), vec![d], true));
                t.push((format!("{p}.self_attn.k_norm.weight"), vec![d], true));
            }
            t.push((
                format!("{p}.post_attention_layernorm.weight"),
                vec![c],
                true,
            ));
            t.push((format!("{p}.mlp.gate_proj.weight"), vec![f, c], false));
            t.push((format!("{p}.mlp.up_proj.weight"), vec![f, c], false));
            t.push((format!("{p}.mlp.down_proj.weight"), vec![c, f], false));
        }
        t.push(("model.norm.weight".to_string(), vec![c], true));
        if !self.tie_embeddings {
            t.push(("lm_head.weight".to_string(), vec![v, c], false));
        }
        t
    }
}

/// bf16 bytes of `n` values: 1.0 for norms, else uniform with std 0.02, in parallel chunks
/// each seeded from (seed, tensor index, chunk) so the result does not depend on threads.
fn random_bf16(n: usize, is_norm: bool, seed: u64, index: usize) -> Vec<u8> {
    const CHUNK: usize = 1 << 20;
    let bound = 0.02f32 * 3f32.sqrt();
    let mut out = vec![0u8; n * 2];
    out.par_chunks_mut(CHUNK * 2)
        .enumerate()
        .for_each(|(ci, bytes)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((index as u64) << 32) ^ ci as u64);
            for b in bytes.chunks_exact_mut(2) {
                let x = if is_norm {
                    1.0
                } else {
                    rng.random_range(-bound..bound)
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
                    random_bf16(tensors[i].1.iter().product(), tensors[i].2, seed, i),
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
