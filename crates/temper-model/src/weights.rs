//! The frozen base weights of a Llama-family model, on a backend.

use std::ops::Deref;
use std::path::Path;

use temper_core::Backend;
use temper_quant::{read_int8, stored_bits, Quant4, StoredBits};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::lora::Target;
use crate::quantized::{int8_on_load, quantize4_on_load, LoadOptions};
use crate::safetensors_dir::SafetensorsDir;

/// A frozen weight matrix: stored in the compute dtype, or in 4 or 8 bits and dequantised
/// into a scratch buffer each time it is used.
pub enum Frozen<B: Backend> {
    Dense(B::Buf),
    Quant4(B::Quant),
    Int8(B::Int8),
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
                let mut w = be.act_uninit(self.d_out * self.d_in)?;
                be.dequantize4(&mut w, q)?;
                WeightRef::Dequantised(w)
            }
            Frozen::Int8(q) => {
                let mut w = be.act_uninit(self.d_out * self.d_in)?;
                be.dequantize_int8(&mut w, q)?;
                WeightRef::Dequantised(w)
            }
        })
    }
}

/// One decoder layer's frozen weights. Norm weights are stored as they multiply (Gemma's
/// (1 + w) already added, in f32 then).
pub struct LayerWeights<B: Backend> {
    pub input_norm: B::Buf, // (C)
    /// The norm before the MLP: `post_attention_layernorm` of Llama-style blocks,
    /// `pre_feedforward_layernorm` of Gemma 2 / 3.
    pub mlp_norm: B::Buf, // (C)
    /// Gemma 2 / 3: the norms of the attention output (`post_attention_layernorm`) and of the
    /// MLP output (`post_feedforward_layernorm`), before each residual add.
    pub sandwich: Option<SandwichNorms<B>>,
    /// RMSNorm weights over each query and key head (D), when the model has them (Qwen3,
    /// Gemma 3).
    pub qk_norm: Option<QkNorm<B>>,
    /// Indexed by [`Target::index`]: the model's linear layers ([`ModelConfig::linears`]).
    pub linears: Vec<Option<Linear<B>>>,
}

/// Gemma 2 / 3's norms after attention and after the MLP, each (C).
pub struct SandwichNorms<B: Backend> {
    pub attn_out: B::Buf,
    pub mlp_out: B::Buf,
}

/// Qwen3's per-head norms: `q_norm` and `k_norm`, each (D).
pub struct QkNorm<B: Backend> {
    pub q: B::Buf,
    pub k: B::Buf,
}

impl<B: Backend> LayerWeights<B> {
    /// The layer's linear `t`; an error when this family has no such layer.
    pub fn linear(&self, t: Target) -> Result<&Linear<B>> {
        self.linears
            .get(t.index())
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                ModelError::Adapter(format!("this model's layers have no `{}`", t.path()))
            })
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

    /// Loads every tensor named by transformers' Llama / Mistral / Qwen2 / Qwen3 layout, as
    /// stored.
    pub fn load(be: &B, cfg: &ModelConfig, dir: &Path) -> Result<Self> {
        Self::load_with(be, cfg, dir, &LoadOptions::default())
    }

    /// Loads the weights, the linear layers in 4 or 8 bits when the folder is saved that way
    /// (bitsandbytes layout) or `opts` asks for it. Quantising reads one tensor at a time, so
    /// host memory stays near one weight in f32 beyond the mapped files.
    pub fn load_with(be: &B, cfg: &ModelConfig, dir: &Path, opts: &LoadOptions) -> Result<Self> {
        opts.check()?;
        let st = SafetensorsDir::open(dir)?;
        let stored = stored_bits(dir)?;
        let prequantized = match stored {
            StoredBits::FourBit => Some(temper_quant::load_4bit_folder(dir)?),
            _ => None,
        };
        check_layers(&st, cfg, dir)?;
        let (c, v) = (cfg.hidden, cfg.vocab);
        let get = |name: &str, shape: &[usize]| -> Result<B::Buf> {
            st.with_stored(name, shape, |bytes, stored| {
                Ok(be.upload_stored(bytes, stored)?)
            })
        };
        // Gemma's RMSNorm multiplies by (1 + w) in f32: kept as that sum, in f32.
        let norm = |name: &str, len: usize| -> Result<B::Buf> {
            if !cfg.norm_plus_one {
                return get(name, &[len]);
            }
            let mut w = st.read_shaped(name, &[len])?.data;
            w.iter_mut().for_each(|x| *x += 1.0);
            Ok(be.upload(&w)?)
        };
        let embed = get("model.embed_tokens.weight", &[v, c])?;
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            let mut linears: Vec<Option<Linear<B>>> = (0..Target::COUNT).map(|_| None).collect();
            for t in cfg.linears().iter().copied() {
                let (d_in, d_out) = t.dims(cfg);
                let prefix = format!("{p}.{}", t.path());
                let name = format!("{prefix}.weight");
                let stored4 = prequantized.as_ref().and_then(|m| m.get(&name));
                // An 8-bit folder keeps the modules bitsandbytes skipped (llm_int8_skip_modules)
                // in 16 bits, without a SCB.
                let stored8 =
                    stored == StoredBits::EightBit && st.contains(&format!("{prefix}.SCB"));
                let w = if let Some(q) = stored4 {
                    if q.shape != [d_out, d_in] {
                        return Err(ModelError::Shape {
                            name,
                            got: q.shape.clone(),
                            expected: vec![d_out, d_in],
                        });
                    }
                    Frozen::Quant4(be.upload_quant4(&Quant4::from_state(q))?)
                } else if stored8 {
                    Frozen::Int8(be.upload_int8(&read_int8(&st, &prefix, d_out, d_in)?)?)
                } else if let Some(spec) = opts.quantize {
                    Frozen::Quant4(quantize4_on_load(be, &st, &name, [d_out, d_in], spec)?)
                } else if opts.int8 {
                    Frozen::Int8(int8_on_load(be, &st, &name, d_out, d_in)?)
                } else {
                    Frozen::Dense(get(&name, &[d_out, d_in])?)
                };
                let has_bias = cfg.qkv_bias && matches!(t, Target::Q | Target::K | Target::V);
                let bias_name = format!("{p}.{}.bias", t.path());
                let bias = if has_bias || st.contains(&bias_name) {
                    Some(get(&bias_name, &[d_out])?)
                } else {
                    None
                };
                linears[t.index()] = Some(Linear {
                    w,
                    bias,
                    d_in,
                    d_out,
                });
            }
            let qk_norm = if cfg.qk_norm {
                let d = cfg.head_dim;
                Some(QkNorm {
                    q: norm(&format!("{p}.self_attn.q_norm.weight"), d)?,
                    k: norm(&format!("{p}.self_attn.k_norm.weight"), d)?,
                })
            } else {
                None
            };
            let (mlp_norm, sandwich) = if cfg.sandwich_norms {
                (
                    norm(&format!("{p}.pre_feedforward_layernorm.weight"), c)?,
                    Some(SandwichNorms {
                        attn_out: norm(&format!("{p}.post_attention_layernorm.weight"), c)?,
                        mlp_out: norm(&format!("{p}.post_feedforward_layernorm.weight"), c)?,
                    }),
                )
            } else {
                (
                    norm(&format!("{p}.post_attention_layernorm.weight"), c)?,
                    None,
                )
            };
            layers.push(LayerWeights {
                input_norm: norm(&format!("{p}.input_layernorm.weight"), c)?,
                mlp_norm,
                sandwich,
                qk_norm,
                linears,
            });
        }
        let final_norm = norm("model.norm.weight", c)?;
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

/// The layers stored must be exactly `0..num_hidden_layers`: more would be left unused
/// (a silently shallower model), fewer would fail half-way through loading. Checked before
/// anything is allocated for the layers.
pub fn check_layers(st: &SafetensorsDir, cfg: &ModelConfig, dir: &Path) -> Result<()> {
    let present = st.layer_indices();
    let config = dir.join("config.json");
    let extra: Vec<usize> = present
        .iter()
        .copied()
        .filter(|&l| l >= cfg.layers)
        .collect();
    if !extra.is_empty() {
        let mut unused: Vec<&str> = st
            .names()
            .filter(|n| {
                n.strip_prefix("model.layers.")
                    .and_then(|r| r.split('.').next())
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(|l| l >= cfg.layers)
            })
            .collect();
        unused.sort_unstable();
        let shown = unused.len().min(3);
        return Err(ModelError::Config {
            path: config,
            msg: format!(
                "num_hidden_layers is {} but the safetensors files hold layers up to {}; {} \
                 tensors would be left unused ({}{}): set num_hidden_layers to {}",
                cfg.layers,
                extra[extra.len() - 1],
                unused.len(),
                unused[..shown].join(", "),
                if unused.len() > shown { ", ..." } else { "" },
                present.len()
            ),
        });
    }
    if let Some(missing) = (0..cfg.layers).find(|l| present.binary_search(l).is_err()) {
        return Err(ModelError::Config {
            path: config,
            msg: format!(
                "num_hidden_layers is {} but the safetensors files hold {} layers (no tensor \
                 `model.layers.{missing}.*`): the folder is incomplete or num_hidden_layers is wrong",
                cfg.layers,
                present.len()
            ),
        });
    }
    Ok(())
}
