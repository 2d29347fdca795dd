//! The frozen base weights of a Llama-family model, on a backend.

use std::ops::Deref;
use std::path::Path;

use temper_core::Backend;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::lora::Target;
use crate::safetensors_dir::SafetensorsDir;

/// A frozen weight matrix: stored in the compute dtype, or in 4 bits and dequantised into a
/// scratch buffer each time it is used.
pub enum Frozen<B: Backend> {
    Dense(B::Buf),
    Quant4(B::Quant),
}

/// A weight ready for a GEMM: the stored buffer, or a dequantised copy dropped after use.
pub enum WeightRef<'a, B: Backend> {
    Stored(&'a B::Buf),
    Dequantised(B::Buf),
}

impl<B: Backend> Deref for WeightRef<'_, B> {
    type Target = B::Buf;
    fn deref(&self) -> &B::Buf {
        match self {
            WeightRef::Stored(b) => b,
            WeightRef::Dequantised(b) => b,
        }
    }
}

/// A frozen linear layer: W (out, in) and an optional bias (out).
pub struct Linear<B: Backend> {
    pub w: Frozen<B>,
    pub bias: Option<B::Buf>,
    pub d_in: usize,
    pub d_out: usize,
}

impl<B: Backend> Linear<B> {
    /// W (out, in) in the compute dtype.
    pub fn weight(&self, be: &B) -> Result<WeightRef<'_, B>> {
        Ok(match &self.w {
            Frozen::Dense(w) => WeightRef::Stored(w),
            Frozen::Quant4(q) => {
                let mut w = be.act_zeros(self.d_out * self.d_in)?;
                be.dequantize4(&mut w, q)?;
                WeightRef::Dequantised(w)
            }
        })
    }
}

/// One decoder layer's frozen weights.
pub struct LayerWeights<B: Backend> {
    pub input_norm: B::Buf,     // (C)
    pub post_attn_norm: B::Buf, // (C)
    /// Indexed by [`Target::index`]: q, k, v, o, gate, up, down.
    pub linears: Vec<Linear<B>>,
}

impl<B: Backend> LayerWeights<B> {
    pub fn linear(&self, t: Target) -> &Linear<B> {
        &self.linears[t.index()]
    }
}

pub struct Weights<B: Backend> {
    pub embed: B::Buf, // (V, C)
    pub layers: Vec<LayerWeights<B>>,
    pub final_norm: B::Buf, // (C)
    /// (V, C); None when tied to `embed`.
    pub lm_head: Option<B::Buf>,
}

impl<B: Backend> Weights<B> {
    pub fn head(&self) -> &B::Buf {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Loads every tensor named by transformers' Llama / Mistral / Qwen2 layout.
    pub fn load(be: &B, cfg: &ModelConfig, dir: &Path) -> Result<Self> {
        let st = SafetensorsDir::open(dir)?;
        let (c, v) = (cfg.hidden, cfg.vocab);
        let get = |name: &str, shape: &[usize]| -> Result<B::Buf> {
            let t = st.read_shaped(name, shape)?;
            Ok(be.upload_frozen(&t.data)?)
        };
        let embed = get("model.embed_tokens.weight", &[v, c])?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            let mut linears = Vec::with_capacity(7);
            for t in Target::ALL {
                let (d_in, d_out) = t.dims(cfg);
                let w = get(&format!("{p}.{}.weight", t.path()), &[d_out, d_in])?;
                let has_bias = cfg.qkv_bias && matches!(t, Target::Q | Target::K | Target::V);
                let bias_name = format!("{p}.{}.bias", t.path());
                let bias = if has_bias || st.contains(&bias_name) {
                    Some(get(&bias_name, &[d_out])?)
                } else {
                    None
                };
                linears.push(Linear {
                    w: Frozen::Dense(w),
                    bias,
                    d_in,
                    d_out,
                });
            }
            layers.push(LayerWeights {
                input_norm: get(&format!("{p}.input_layernorm.weight"), &[c])?,
                post_attn_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[c])?,
                linears,
            });
        }
        let final_norm = get("model.norm.weight", &[c])?;
        let lm_head = if st.contains("lm_head.weight") && !cfg.tie_embeddings {
            Some(get("lm_head.weight", &[v, c])?)
        } else if cfg.tie_embeddings {
            None
        } else {
            return Err(ModelError::MissingTensor {
                dir: dir.to_path_buf(),
                name: "lm_head.weight".into(),
                hint: " (config.json says tie_word_embeddings is false)".into(),
            });
        };
        Ok(Weights {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }
}
