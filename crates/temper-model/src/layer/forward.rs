//! The layer's forward, the same ops for training, evaluation and generation (the lines of
//! the module comment of `layer`, top to bottom).

use temper_core::{Backend, CoreError, DType};

use crate::batch::StepCtx;
use crate::error::{ModelError, Result};
use crate::layer::columns::split_columns;
use crate::layer::{Attention, DecoderLayer, LayerActs, QkNormActs, Rows};
use crate::linear::{linear_forward_opt, LoraSaved};
use crate::lora::{LoraParams, Target};

/// Whether a forward keeps what the layer's backward reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Return the [`LayerActs`] (training; needs the varlen attention, whose log-sum-exp the
    /// backward reads).
    Activations,
    /// Free every activation with the layer (evaluation, generation).
    Nothing,
}

impl<B: Backend> DecoderLayer<'_, B> {
    /// Runs the layer on x (N, C), writing out (N, C), with its attention as `attention` says;
    /// returns the activations when `keep` asks for them.
    ///
    /// `out` may be None: a layer recomputed for its backward skips the last projection's
    /// base GEMM and the residual add, which nothing reads (Gemma 2/3 still run the GEMM: its
    /// norm's input and rstd are read), and the whole MLP when it runs in tiles.
    pub fn forward(
        &self,
        x: &B::Buf,
        out: Option<&mut B::Buf>,
        attention: Attention<'_, B>,
        keep: Keep,
        lora: Option<&LoraParams<B>>,
        ctx: &StepCtx,
    ) -> Result<Option<LayerActs<B>>> {
        let (be, cfg, w) = (self.be, self.cfg, self.weights);
        let n = self.tokens();
        let c = cfg.hidden;
        let mut saved: Vec<Option<LoraSaved<B>>> = (0..Target::COUNT).map(|_| None).collect();
        let mut lin = |t: Target, y: Option<&mut B::Buf>, input: &B::Buf| -> Result<()> {
            let adapter = self.lora_ref(lora, t, ctx, 0);
            saved[t.index()] = linear_forward_opt(be, y, input, w.linear(t)?, n, adapter)?;
            Ok(())
        };

        // What an earlier forward over the same tokens kept: q, k and v after RoPE and the
        // query scale (layers without per-head q/k norms), and the sum after the attention
        // (layers without sandwich norms). Only the LoRA values of the projections they skip
        // are rebuilt for the backward.
        let (attention, kept_qkv, kept_residual) = match attention {
            Attention::Varlen {
                cu_seqlens,
                kept,
                residual,
                qkv,
            } => (
                Attention::Varlen {
                    cu_seqlens,
                    kept,
                    residual: None,
                    qkv: None,
                },
                qkv.filter(|_| w.qk_norm.is_none()),
                residual.filter(|_| w.sandwich.is_none()),
            ),
            other => (other, None, None),
        };
        let mut xn1 = be.act_uninit(n * c)?; // (N, C)
        let mut rstd1 = be.uninit_as(n, DType::F32)?; // (N)
        be.rmsnorm_forward(&mut xn1, &mut rstd1, x, &w.input_norm, c, cfg.rms_eps)?;
        let (q, k, v, qk_norm) = match kept_qkv {
            Some([q, k, v]) => {
                let targets: &[Target] = if cfg.fused_proj {
                    &[Target::Qkv]
                } else {
                    &[Target::Q, Target::K, Target::V]
                };
                for &t in targets {
                    lin(t, None, &xn1)?;
                }
                (q, k, v, None)
            }
            None => self.project_qkv(&xn1, &mut lin)?,
        };
        let (att, lse) = self.attend(attention, &q, &k, &v)?; // (N, Hq*D), (N, Hq)
        let (x2, attn_out) = match (&w.sandwich, kept_residual) {
            (None, Some(x2)) => {
                lin(Target::O, None, &att)?;
                (x2, None)
            }
            (Some(norms), _) => {
                let mut a = be.act_uninit(n * c)?; // (N, C)
                lin(Target::O, Some(&mut a), &att)?;
                let mut rstd = be.uninit_as(n, DType::F32)?; // (N)
                let mut x2 = be.act_uninit(n * c)?; // (N, C)
                be.rmsnorm_forward(&mut x2, &mut rstd, &a, &norms.attn_out, c, cfg.rms_eps)?;
                be.axpy(&mut x2, 1.0, x)?;
                (x2, Some((a, rstd)))
            }
            (None, None) => {
                let mut x2 = be.act_uninit(n * c)?; // (N, C)
                lin(Target::O, Some(&mut x2), &att)?;
                be.axpy(&mut x2, 1.0, x)?;
                (x2, None)
            }
        };

        // The MLP: whole, keeping what its backward reads, or tile by tile keeping nothing
        // (the backward rebuilds it).
        let mlp = if self.mlp_tiled() {
            self.mlp_forward_tiled(&x2, out, lora, ctx)?;
            None
        } else {
            Some(self.mlp_forward(&x2, out, Rows::all(n), lora, ctx)?)
        };

        if keep == Keep::Nothing {
            return Ok(None);
        }
        let lse = lse.ok_or_else(|| {
            ModelError::Core(CoreError::Invalid {
                op: "layer_forward",
                msg: format!(
                    "layer {}: activations for the backward are kept only with the varlen \
                     attention (the KV cache's attention makes no log-sum-exp)",
                    self.index
                ),
            })
        })?;
        Ok(Some(LayerActs {
            xn1,
            rstd1,
            q,
            k,
            v,
            att,
            lse,
            attn_out,
            x2,
            mlp,
            qk_norm,
            lora: saved,
        }))
    }

    /// q (N, Hq*D), k and v (N, Hkv*D) from the normed input xn1 (N, C): the projections
    /// (through `lin`, which keeps their LoRA values), the per-head q/k norms where the model
    /// has them, RoPE and the query scale.
    #[allow(clippy::type_complexity)]
    fn project_qkv(
        &self,
        xn1: &B::Buf,
        lin: &mut impl FnMut(Target, Option<&mut B::Buf>, &B::Buf) -> Result<()>,
    ) -> Result<(B::Buf, B::Buf, B::Buf, Option<QkNormActs<B>>)> {
        let (be, cfg, w) = (self.be, self.cfg, self.weights);
        let n = self.tokens();
        let d = cfg.head_dim;
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let mut q = be.act_uninit(n * qd)?; // (N, Hq*D)
        let mut k = be.act_uninit(n * kvd)?; // (N, Hkv*D)
        let mut v = be.act_uninit(n * kvd)?; // (N, Hkv*D)
        if cfg.fused_proj {
            let mut qkv = be.act_uninit(n * (qd + 2 * kvd))?; // (N, Hq*D + 2*Hkv*D)
            lin(Target::Qkv, Some(&mut qkv), xn1)?;
            split_columns(
                be,
                &qkv,
                &mut [(&mut q, qd), (&mut k, kvd), (&mut v, kvd)],
                n,
            )?;
        } else {
            lin(Target::Q, Some(&mut q), xn1)?;
            lin(Target::K, Some(&mut k), xn1)?;
            lin(Target::V, Some(&mut v), xn1)?;
        }
        // Qwen3 / Gemma 3: RMSNorm over each head's D values, rows (N*H, D), before RoPE.
        let qk_norm = match &w.qk_norm {
            Some(norm) => {
                let q_pre = std::mem::replace(&mut q, be.act_uninit(n * qd)?);
                let k_pre = std::mem::replace(&mut k, be.act_uninit(n * kvd)?);
                let mut rstd_q = be.uninit_as(n * cfg.heads, DType::F32)?; // (N*Hq)
                let mut rstd_k = be.uninit_as(n * cfg.kv_heads, DType::F32)?; // (N*Hkv)
                be.rmsnorm_forward(&mut q, &mut rstd_q, &q_pre, &norm.q, d, cfg.rms_eps)?;
                be.rmsnorm_forward(&mut k, &mut rstd_k, &k_pre, &norm.k, d, cfg.rms_eps)?;
                Some(QkNormActs {
                    q_pre,
                    rstd_q,
                    k_pre,
                    rstd_k,
                })
            }
            None => None,
        };
        let (positions, rope, rot) = (self.positions, self.rope, cfg.rope_dims);
        be.rope_partial_forward(&mut q, positions, &rope.cos, &rope.sin, cfg.heads, d, rot)?;
        be.rope_partial_forward(
            &mut k,
            positions,
            &rope.cos,
            &rope.sin,
            cfg.kv_heads,
            d,
            rot,
        )?;
        let q_mult = self.q_multiplier();
        if q_mult != 1.0 {
            be.scale(&mut q, q_mult)?;
        }
        Ok((q, k, v, qk_norm))
    }

    /// [`DecoderLayer::forward`] over a packed batch, keeping the activations for the
    /// backward. `kept`: att (N, Hq*D) and lse (N, Hq) of an earlier forward, to skip the
    /// attention forward in a recompute; `residual`: that forward's x + o_proj(att) (N, C), to
    /// skip o_proj as well (ignored by layers with sandwich norms).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_for_backward(
        &self,
        x: &B::Buf,
        out: Option<&mut B::Buf>,
        cu_seqlens: &[u32],
        kept: Option<(B::Buf, B::Buf)>,
        residual: Option<B::Buf>,
        qkv: Option<[B::Buf; 3]>,
        lora: Option<&LoraParams<B>>,
        ctx: &StepCtx,
    ) -> Result<LayerActs<B>> {
        let attention = Attention::Varlen {
            cu_seqlens,
            kept,
            residual,
            qkv,
        };
        self.forward(x, out, attention, Keep::Activations, lora, ctx)?
            .ok_or_else(|| {
                ModelError::Core(CoreError::Invalid {
                    op: "layer_forward",
                    msg: format!("layer {}: no activations came back", self.index),
                })
            })
    }
}
