//! The whole model: embedding -> decoder layers -> final norm -> LM head fused with the loss,
//! and the backward that walks it in reverse, with optional gradient checkpointing.

use std::path::Path;
use std::sync::Arc;

use temper_core::rope::RopeScaling;
use temper_core::{Backend, DType, Gemm};

use crate::batch::{StepCtx, TokenBatch};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layer::{Attention, DecoderLayer, Keep, LayerActs};
use crate::lora::LoraParams;
use crate::parking::{HostParking, ParkingWanted};
use crate::quantized::LoadOptions;
use crate::rope_tables::RopeTables;
use crate::weights::Weights;

/// A caller's hook run after each layer's backward (see [`Model::forward_backward_with`]),
/// failing with the caller's own error type `E`.
pub type LayerHook<'a, B, E> =
    dyn FnMut(usize, &mut LoraParams<B>) -> std::result::Result<(), E> + 'a;

/// When to keep activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpointing {
    /// Keep every layer's activations (fastest, most memory).
    Off,
    /// Keep each layer's input and recompute the layer before its backward.
    EveryLayer,
    /// As EveryLayer, with the kept inputs in host memory (pinned on GPUs): a layer's input
    /// comes back to the device just before its backward.
    EveryLayerOnHost,
}

impl Checkpointing {
    pub fn recomputes(self) -> bool {
        self != Checkpointing::Off
    }
}

/// A layer's input kept for backward, on the device or in host memory.
enum Kept<B: Backend> {
    Device(B::Buf),
    /// The layer's input in host memory, with its attention output (host) and log-sum-exp
    /// (device) when kept, so the recompute before its backward skips the attention forward;
    /// and as [`Model::parking`] wants, the sum after the attention (host), so it skips o_proj
    /// too, and q, k, v after RoPE (host), so it skips their projections' base GEMMs.
    Host {
        x: B::Host,
        attention: Option<(B::Host, B::Buf)>,
        residual: Option<B::Host>,
        qkv: Option<[B::Host; 3]>,
    },
}

pub struct Model<B: Backend> {
    pub be: Arc<B>,
    pub cfg: ModelConfig,
    pub weights: Weights<B>,
    /// RoPE tables of the (global) layers.
    pub rope: RopeTables<B>,
    /// Gemma 3: the tables of the local (sliding-window) layers, from rope_local_base_freq.
    pub rope_local: Option<RopeTables<B>>,
    /// LongRoPE: the tables with the long factors, used by a forward whose longest position
    /// is past the pretrained context (`rope` then holds the short factors), as transformers
    /// switches; with the position past which they apply.
    pub rope_long: Option<(RopeTables<B>, usize)>,
    /// Tokens per chunk of the fused LM head + loss.
    pub loss_chunk: usize,
    /// Tokens per MLP tile of a sequence whose layers are not kept for the backward
    /// (recomputed with checkpointing, or evaluated): see `layer/mlp.rs`.
    pub mlp_tile_tokens: usize,
    /// With the layer inputs and attention outputs in host memory, what else each layer parks
    /// there where host memory allows (see `parking.rs`): x + o_proj(att), so the recompute
    /// skips o_proj (on unless `TEMPER_PARK_RESIDUAL=0`), and q, k, v after RoPE, so it skips
    /// their projections (only with `TEMPER_PARK_QKV=1`).
    pub parking: ParkingWanted,
}

impl<B: Backend> Model<B> {
    /// Loads config.json and the safetensors weights of a Hugging Face folder.
    pub fn load(be: Arc<B>, dir: &Path) -> Result<Self> {
        Self::load_with(be, dir, &LoadOptions::default())
    }

    /// Loads with the frozen linear layers quantised to 4 bits when `opts` asks (or when the
    /// folder is saved in bitsandbytes' 4-bit layout).
    pub fn load_with(be: Arc<B>, dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let cfg = ModelConfig::from_dir(dir)?;
        Self::load_configured(be, dir, cfg, opts)
    }

    /// [`Model::load_with`] with the folder's config.json already read (and adjusted, e.g. by
    /// [`ModelConfig::apply_rope_scaling`]).
    pub fn load_configured(
        be: Arc<B>,
        dir: &Path,
        cfg: ModelConfig,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let weights = Weights::load_with(&*be, &cfg, dir, opts)?;
        Self::from_parts(be, cfg, weights)
    }

    pub fn from_parts(be: Arc<B>, cfg: ModelConfig, weights: Weights<B>) -> Result<Self> {
        let positions = cfg.max_positions.max(1);
        let scaling = cfg.rope_scaling.as_ref();
        let (rope, rope_long) = match scaling {
            Some(RopeScaling::LongRope {
                original_max_position_embeddings,
                ..
            }) => {
                let original = *original_max_position_embeddings as usize;
                let short = RopeTables::new(&*be, &cfg, cfg.rope_theta, scaling, original)?;
                let long = if positions > original {
                    Some((
                        RopeTables::new(&*be, &cfg, cfg.rope_theta, scaling, positions)?,
                        original,
                    ))
                } else {
                    None
                };
                (short, long)
            }
            _ => (
                RopeTables::new(&*be, &cfg, cfg.rope_theta, scaling, positions)?,
                None,
            ),
        };
        let rope_local = match cfg.local_rope_theta {
            Some(theta) => Some(RopeTables::new(&*be, &cfg, theta, None, positions)?),
            None => None,
        };
        Ok(Model {
            rope,
            rope_local,
            rope_long,
            be,
            cfg,
            weights,
            loss_chunk: 1024,
            mlp_tile_tokens: crate::layer::MLP_TILE_TOKENS,
            parking: ParkingWanted::from_env().map_err(ModelError::LoadOptions)?,
        })
    }

    /// What each layer of a step over `tokens` tokens parks beside its input when the inputs
    /// go to the host (`Checkpointing::EveryLayerOnHost`): [`Model::parking`] within half of
    /// the host memory available now.
    pub fn host_parking(&self, tokens: usize) -> HostParking {
        HostParking::decide(
            &self.cfg,
            tokens,
            self.be.compute_dtype().size(),
            temper_core::memory::host_available_bytes(),
            self.parking,
        )
    }

    fn check_batch(&self, batch: &TokenBatch<'_>) -> Result<()> {
        let n = batch.len();
        let bad =
            |msg: String| ModelError::Core(temper_core::CoreError::Invalid { op: "batch", msg });
        if batch.positions.len() != n || batch.targets.len() != n {
            return Err(bad(format!(
                "{n} ids but {} positions and {} targets",
                batch.positions.len(),
                batch.targets.len()
            )));
        }
        if let Some(&p) = batch.positions.iter().max() {
            if p as usize >= self.cfg.max_positions {
                return Err(bad(format!(
                    "position {p} is beyond the {} positions the model takes (max_position_embeddings of config.json); lower max_seq_len, or extend the context on purpose with rope_scaling (linear, dynamic, yarn)",
                    self.cfg.max_positions
                )));
            }
        }
        Ok(())
    }

    /// The RoPE tables layer `l` uses for a forward over `positions`: Gemma 3's local tables
    /// on its sliding-window layers; LongRoPE's long ones when a position is past the
    /// pretrained context.
    pub fn rope_for(&self, l: usize, positions: &[u32]) -> &RopeTables<B> {
        if self.cfg.local_rope(l) {
            if let Some(local) = &self.rope_local {
                return local;
            }
        }
        if let Some((long, original)) = &self.rope_long {
            let longest = positions.iter().max().map_or(0, |&p| p as usize + 1);
            if longest > *original {
                return long;
            }
        }
        &self.rope
    }

    /// Layer `l` over tokens at `positions` (N), with the RoPE tables those positions use.
    pub fn layer<'m>(&'m self, l: usize, positions: &'m [u32]) -> DecoderLayer<'m, B> {
        DecoderLayer {
            be: &*self.be,
            cfg: &self.cfg,
            index: l,
            weights: &self.weights.layers[l],
            rope: self.rope_for(l, positions),
            positions,
            mlp_tile_tokens: self.mlp_tile_tokens,
        }
    }

    /// Embedding lookup: (N, C).
    fn embed(&self, batch: &TokenBatch<'_>) -> Result<B::Buf> {
        self.embed_ids(batch.ids)
    }

    /// Embedding rows of `ids` (N, C), times sqrt(hidden) for Gemma (the factor rounded to
    /// the compute dtype first, as transformers casts it to the embeddings' dtype).
    pub(crate) fn embed_ids(&self, ids: &[u32]) -> Result<B::Buf> {
        let c = self.cfg.hidden;
        let mut x = self.be.act_uninit(ids.len() * c)?;
        self.be
            .embedding_forward(&mut x, ids, &self.weights.embed, c)?;
        if self.cfg.embed_scale {
            let normalizer = self.be.compute_dtype().round((c as f64).sqrt() as f32);
            self.be.scale(&mut x, normalizer)?;
        }
        Ok(x)
    }

    /// Logits soft-capped on the host (Gemma 2's final_logit_softcapping), in place.
    pub(crate) fn cap_logits(&self, logits: &mut [f32]) {
        if let Some(cap) = self.cfg.final_softcap {
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
    }

    /// Runs all layers and the final norm. Returns the normed hidden states (N, C).
    fn trunk(&self, lora: Option<&LoraParams<B>>, batch: &TokenBatch<'_>) -> Result<B::Buf> {
        self.check_batch(batch)?;
        let ctx = StepCtx::eval();
        let (n, c) = (batch.len(), self.cfg.hidden);
        let mut x = self.embed(batch)?;
        for l in 0..self.cfg.layers {
            let mut out = self.be.act_uninit(n * c)?; // (N, C)
            let attention = Attention::Varlen {
                cu_seqlens: batch.cu_seqlens,
                kept: None,
                residual: None,
                qkv: None,
            };
            self.layer(l, batch.positions).forward(
                &x,
                Some(&mut out),
                attention,
                Keep::Nothing,
                lora,
                &ctx,
            )?;
            x = out;
        }
        Ok(self.final_norm(&x)?.0)
    }

    /// The final RMSNorm of the last layer's output x (N, C): (normed (N, C), rstd (N)).
    fn final_norm(&self, x: &B::Buf) -> Result<(B::Buf, B::Buf)> {
        let c = self.cfg.hidden;
        let n = self.be.len(x) / c;
        let mut xf = self.be.act_uninit(n * c)?;
        let mut rstd = self.be.uninit_as(n, DType::F32)?;
        self.be.rmsnorm_forward(
            &mut xf,
            &mut rstd,
            x,
            &self.weights.final_norm,
            c,
            self.cfg.rms_eps,
        )?;
        Ok((xf, rstd))
    }

    /// Full logits (N, V). Only for small batches: tests, generation.
    pub fn logits(&self, lora: Option<&LoraParams<B>>, batch: &TokenBatch<'_>) -> Result<Vec<f32>> {
        let xf = self.trunk(lora, batch)?;
        let (n, c, v) = (batch.len(), self.cfg.hidden, self.cfg.vocab);
        let mut logits = self.be.zeros(n * v)?;
        self.be
            .matmul(&mut logits, &xf, self.weights.head(), Gemm::nt(n, v, c))?;
        let mut logits = self.be.download(&logits)?;
        self.cap_logits(&mut logits);
        Ok(logits)
    }

    /// Each token's loss (N), 0 where the target is -100. No gradients.
    pub fn token_losses(
        &self,
        lora: Option<&LoraParams<B>>,
        batch: &TokenBatch<'_>,
    ) -> Result<Vec<f32>> {
        let xf = self.trunk(lora, batch)?;
        let (c, v) = (self.cfg.hidden, self.cfg.vocab);
        Ok(self.be.linear_cross_entropy_capped(
            None,
            &xf,
            self.weights.head(),
            batch.targets,
            c,
            v,
            1.0,
            self.loss_chunk,
            self.cfg.final_softcap,
        )?)
    }

    /// Forward and backward of one micro-batch. LoRA gradients of `grad_scale * sum of token
    /// losses` are ADDED to `lora`'s grads (so micro-batches accumulate). Returns each token's
    /// loss (N).
    pub fn forward_backward(
        &self,
        lora: &mut LoraParams<B>,
        batch: &TokenBatch<'_>,
        grad_scale: f32,
        ckpt: Checkpointing,
        ctx: &StepCtx,
    ) -> Result<Vec<f32>> {
        self.forward_backward_with::<ModelError>(lora, batch, grad_scale, ckpt, ctx, &mut |_, _| {
            Ok(())
        })
    }

    /// [`Model::forward_backward`], calling `layer_done(l, lora)` right after layer l's
    /// backward has been queued: from then on this micro-batch adds nothing more to the LoRA
    /// gradients of layers l and above (data parallelism starts summing them there). The
    /// hook's error type is the caller's: its errors come back as they were raised, and the
    /// model's own become `E` through `From`.
    pub fn forward_backward_with<E>(
        &self,
        lora: &mut LoraParams<B>,
        batch: &TokenBatch<'_>,
        grad_scale: f32,
        ckpt: Checkpointing,
        ctx: &StepCtx,
        layer_done: &mut LayerHook<'_, B, E>,
    ) -> std::result::Result<Vec<f32>, E>
    where
        E: From<ModelError> + From<temper_core::CoreError>,
    {
        self.check_batch(batch)?;
        lora.make_compute_copies(&*self.be)?;
        let result = self.forward_backward_inner(lora, batch, grad_scale, ckpt, ctx, layer_done);
        lora.drop_compute_copies();
        result
    }

    fn forward_backward_inner<E>(
        &self,
        lora: &mut LoraParams<B>,
        batch: &TokenBatch<'_>,
        grad_scale: f32,
        ckpt: Checkpointing,
        ctx: &StepCtx,
        layer_done: &mut LayerHook<'_, B, E>,
    ) -> std::result::Result<Vec<f32>, E>
    where
        E: From<ModelError> + From<temper_core::CoreError>,
    {
        let be = &*self.be;
        let (n, c, v) = (batch.len(), self.cfg.hidden, self.cfg.vocab);
        let layers = self.cfg.layers;

        // Forward, keeping each layer's input and (without checkpointing) its activations.
        // With the inputs on the host, each layer's attention output goes there too (the
        // recompute then skips attention) while host memory allows: at most half of what the
        // system has available for both together.
        let parking = if ckpt == Checkpointing::EveryLayerOnHost {
            self.host_parking(n)
        } else {
            HostParking::NOTHING
        };
        let (keep_attention, keep_residual, keep_qkv) =
            (parking.attention, parking.residual, parking.qkv);
        let mut inputs: Vec<Kept<B>> = Vec::with_capacity(layers);
        let mut kept: Vec<LayerActs<B>> = Vec::new();
        // Without checkpointing every layer keeps its whole MLP; with it, long sequences run
        // the MLP in tiles that the backward rebuilds one at a time.
        let layer = |l: usize| {
            let mut layer = self.layer(l, batch.positions);
            if !ckpt.recomputes() {
                layer.mlp_tile_tokens = usize::MAX;
            }
            layer
        };
        be.profile_stage("forward");
        let mut x = self.embed(batch)?;
        for l in 0..layers {
            let mut out = be.act_uninit(n * c)?;
            let acts = layer(l).forward_for_backward(
                &x,
                Some(&mut out),
                batch.cu_seqlens,
                None,
                None,
                None,
                Some(lora),
                ctx,
            )?;
            let input = std::mem::replace(&mut x, out);
            match ckpt {
                Checkpointing::Off => {
                    kept.push(acts);
                    inputs.push(Kept::Device(input));
                }
                Checkpointing::EveryLayer => inputs.push(Kept::Device(input)),
                Checkpointing::EveryLayerOnHost => {
                    // One group: the copies queue back to back, and none of them waits
                    // for another of the same layer.
                    let mut group = vec![input];
                    if keep_residual {
                        group.push(acts.x2);
                    }
                    if keep_attention {
                        group.push(acts.att);
                    }
                    if keep_qkv {
                        group.extend([acts.q, acts.k, acts.v]);
                    }
                    let mut parked = be.park_all_on_host(group)?.into_iter();
                    let mut next = || {
                        parked.next().ok_or_else(|| {
                            ModelError::Adapter("internal: a parked buffer is missing".into())
                        })
                    };
                    let x = next()?;
                    let residual = if keep_residual { Some(next()?) } else { None };
                    let attention = if keep_attention {
                        Some((next()?, acts.lse))
                    } else {
                        None
                    };
                    let qkv = if keep_qkv {
                        Some([next()?, next()?, next()?])
                    } else {
                        None
                    };
                    inputs.push(Kept::Host {
                        x,
                        attention,
                        residual,
                        qkv,
                    });
                }
            }
        }

        // The last layer's input starts back while the head runs.
        if let Some(kept) = inputs.last() {
            prefetch(be, kept)?;
        }

        // Final norm, then the LM head fused with the loss and its first backward step.
        be.profile_stage("head");
        let (xf, rstd) = self.final_norm(&x)?;
        let mut dxf = be.act_uninit(n * c)?;
        let losses = be.linear_cross_entropy_capped(
            Some(&mut dxf),
            &xf,
            self.weights.head(),
            batch.targets,
            c,
            v,
            grad_scale,
            self.loss_chunk,
            self.cfg.final_softcap,
        )?;
        drop(xf);
        let mut dx = be.act_uninit(n * c)?;
        be.rmsnorm_backward(&mut dx, &dxf, &x, &self.weights.final_norm, &rstd, c)?;
        drop((dxf, x));

        // Backward, layer by layer in reverse.
        for l in (0..layers).rev() {
            let (x_in, attention, residual, qkv) = match inputs.pop() {
                Some(Kept::Device(b)) => (b, None, None, None),
                Some(Kept::Host {
                    x,
                    attention,
                    residual,
                    qkv,
                }) => (
                    be.restore_from_host(&x)?,
                    match attention {
                        Some((att, lse)) => Some((be.restore_from_host(&att)?, lse)),
                        None => None,
                    },
                    match residual {
                        Some(r) => Some(be.restore_from_host(&r)?),
                        None => None,
                    },
                    match qkv {
                        Some([q, k, v]) => Some([
                            be.restore_from_host(&q)?,
                            be.restore_from_host(&k)?,
                            be.restore_from_host(&v)?,
                        ]),
                        None => None,
                    },
                ),
                None => {
                    return Err(
                        ModelError::Adapter("internal: layer inputs exhausted".into()).into(),
                    )
                }
            };
            // The next layer's input travels while this one recomputes and walks back.
            if let Some(kept) = inputs.last() {
                prefetch(be, kept)?;
            }
            let layer = layer(l);
            let acts = match kept.pop() {
                Some(a) => a,
                None => {
                    be.profile_stage("recompute");
                    let cu = batch.cu_seqlens;
                    layer.forward_for_backward(
                        &x_in,
                        None,
                        cu,
                        attention,
                        residual,
                        qkv,
                        Some(lora),
                        ctx,
                    )?
                }
            };
            be.profile_stage("backward");
            let cu = batch.cu_seqlens;
            if l > 0 {
                let mut dx_in = be.act_uninit(n * c)?;
                layer.backward(&x_in, acts, &dx, Some(&mut dx_in), lora, cu, ctx)?;
                dx = dx_in;
            } else {
                layer.backward(&x_in, acts, &dx, None, lora, cu, ctx)?;
            }
            layer_done(l, lora)?;
        }
        Ok(losses)
    }
}

/// Starts the copies of what a layer kept in host memory back to the device.
fn prefetch<B: Backend>(be: &B, kept: &Kept<B>) -> Result<()> {
    if let Kept::Host {
        x,
        attention,
        residual,
        qkv,
    } = kept
    {
        be.prefetch_from_host(x)?;
        if let Some((att, _)) = attention {
            be.prefetch_from_host(att)?;
        }
        if let Some(r) = residual {
            be.prefetch_from_host(r)?;
        }
        for h in qkv.iter().flatten() {
            be.prefetch_from_host(h)?;
        }
    }
    Ok(())
}
