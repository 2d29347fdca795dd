//! One decoder layer (pre-norm attention + pre-norm gated MLP), forward and backward.
//!
//! forward:
//!   xn1 = rmsnorm(x, w1);  q, k, v = xn1 Wq^T, xn1 Wk^T, xn1 Wv^T (+ bias, + LoRA)
//!   (Phi-3) q, k, v = the column blocks of one xn1 Wqkv^T
//!   (Qwen3, Gemma 3) q, k = rmsnorm(q, wq), rmsnorm(k, wk) over each head's D values
//!   q, k = rope(q), rope(k) (over the first rope_dims of each head; Gemma 3's local layers
//!   with their own base);  q *= attn_scale * sqrt(D) when the scale is not 1/sqrt(D)
//!   att = attention(q, k, v) (within the layer's sliding window, scores soft-capped for
//!   Gemma 2);  a = att Wo^T;  (Gemma 2/3) a = rmsnorm(a, wa);  x2 = x + a
//!   xn2 = rmsnorm(x2, w2);  g, u = xn2 Wg^T, xn2 Wu^T (Phi-3: the halves of xn2 Wgu^T)
//!   h = act(g) * u (silu, or gelu-tanh for Gemma);  m = h Wd^T
//!   (Gemma 2/3) m = rmsnorm(m, wm);  out = x2 + m
//! backward walks the same lines bottom-up.

use temper_core::{Backend, DType};

use crate::config::MlpAct;
use crate::error::Result;
use crate::linear::{linear_backward, linear_forward_opt, LoraMut, LoraRef, LoraSaved};
use crate::lora::{LoraParams, Target};
use crate::model::{Model, StepCtx, TokenBatch};

/// Everything a layer's backward reads, for N tokens. With gradient checkpointing this is
/// rebuilt from the layer's input just before its backward.
pub struct LayerActs<B: Backend> {
    pub xn1: B::Buf,   // (N, C)
    pub rstd1: B::Buf, // (N)
    pub q: B::Buf,     // (N, Hq*D) after RoPE (and the query scale)
    pub k: B::Buf,     // (N, Hkv*D) after RoPE
    pub v: B::Buf,     // (N, Hkv*D)
    pub att: B::Buf,   // (N, Hq*D)
    pub lse: B::Buf,   // (N, Hq)
    /// Gemma 2/3: the output projection before its norm (N, C), and the norm's rstd (N).
    pub attn_out: Option<(B::Buf, B::Buf)>,
    pub x2: B::Buf,    // (N, C)
    pub xn2: B::Buf,   // (N, C)
    pub rstd2: B::Buf, // (N)
    pub g: B::Buf,     // (N, F)
    pub u: B::Buf,     // (N, F)
    pub h: B::Buf,     // (N, F)
    /// Gemma 2/3: the down projection before its norm (N, C), and the norm's rstd (N).
    pub mlp_out: Option<(B::Buf, B::Buf)>,
    /// The per-head q/k norms' inputs and statistics (Qwen3, Gemma 3).
    pub qk_norm: Option<QkNormActs<B>>,
    /// Per target (indexed by [`Target::index`]).
    pub lora: Vec<Option<LoraSaved<B>>>,
}

/// What the backward of the per-head q/k RMSNorms reads.
pub struct QkNormActs<B: Backend> {
    pub q_pre: B::Buf,  // (N, Hq*D) the q projection, before its norm
    pub rstd_q: B::Buf, // (N*Hq)
    pub k_pre: B::Buf,  // (N, Hkv*D)
    pub rstd_k: B::Buf, // (N*Hkv)
}

impl<B: Backend> Model<B> {
    fn lora_ref<'a>(
        &self,
        lora: Option<&'a LoraParams<B>>,
        layer: usize,
        t: Target,
        ctx: &StepCtx,
    ) -> Option<LoraRef<'a, B>> {
        let lora = lora?;
        let (a, b) = lora.get(layer, t)?;
        Some(LoraRef {
            a,
            b,
            scale: lora.config.scale(),
            dropout: if ctx.training {
                lora.config.dropout
            } else {
                0.0
            },
            seed: ctx.dropout_seed(layer, t),
        })
    }

    /// The factor q is multiplied by after RoPE so that the attention ops' 1/sqrt(D) gives
    /// the model's own score scale (Gemma 2/3's query_pre_attn_scalar^-0.5).
    pub(crate) fn q_multiplier(&self) -> f32 {
        let m = self.cfg.attn_scale * (self.cfg.head_dim as f64).sqrt();
        if (m - 1.0).abs() < 1e-12 {
            1.0
        } else {
            m as f32
        }
    }

    /// The column blocks of a fused projection's output y (N, sum of widths) into `parts`.
    pub(crate) fn split_columns(
        &self,
        y: &B::Buf,
        parts: &mut [(&mut B::Buf, usize)],
        n: usize,
    ) -> Result<()> {
        let total: usize = parts.iter().map(|(_, w)| w).sum();
        let mut off = 0;
        for (dst, width) in parts.iter_mut() {
            self.be
                .copy_columns(dst, *width, 0, y, total, off, *width, n)?;
            off += *width;
        }
        Ok(())
    }

    /// The inverse of [`Model::split_columns`]: the parts' gradients side by side (N, total).
    fn join_columns(&self, parts: &[(&B::Buf, usize)], n: usize) -> Result<B::Buf> {
        let total: usize = parts.iter().map(|(_, w)| w).sum();
        let mut y = self.be.act_uninit(n * total)?;
        let mut off = 0;
        for (src, width) in parts {
            self.be
                .copy_columns(&mut y, total, off, src, *width, 0, *width, n)?;
            off += *width;
        }
        Ok(y)
    }

    /// Runs layer `l` on x (N, C), writing out (N, C), and returns what backward needs.
    pub fn layer_forward(
        &self,
        l: usize,
        x: &B::Buf,
        out: &mut B::Buf,
        lora: Option<&LoraParams<B>>,
        batch: &TokenBatch<'_>,
        ctx: &StepCtx,
    ) -> Result<LayerActs<B>> {
        self.layer_forward_opt(l, x, Some(out), None, lora, batch, ctx)
    }

    /// [`Model::layer_forward`] where `out` may be None: a layer recomputed for its backward
    /// skips the last projection's base GEMM and the residual add, which nothing reads (Gemma
    /// 2/3 still run the GEMM: its norm's input and rstd are read). With `attention` (att
    /// (N, Hq*D), lse (N, Hq) kept from the first forward) it also skips the attention forward.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_forward_opt(
        &self,
        l: usize,
        x: &B::Buf,
        out: Option<&mut B::Buf>,
        attention: Option<(B::Buf, B::Buf)>,
        lora: Option<&LoraParams<B>>,
        batch: &TokenBatch<'_>,
        ctx: &StepCtx,
    ) -> Result<LayerActs<B>> {
        let be = &*self.be;
        let cfg = &self.cfg;
        let w = &self.weights.layers[l];
        let n = batch.len();
        let (c, f, d) = (cfg.hidden, cfg.intermediate, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let mut saved: Vec<Option<LoraSaved<B>>> = (0..Target::COUNT).map(|_| None).collect();
        let mut lin = |t: Target, y: Option<&mut B::Buf>, input: &B::Buf| -> Result<()> {
            let adapter = self.lora_ref(lora, l, t, ctx);
            saved[t.index()] = linear_forward_opt(be, y, input, w.linear(t)?, n, adapter)?;
            Ok(())
        };

        let mut xn1 = be.act_uninit(n * c)?;
        let mut rstd1 = be.uninit_as(n, DType::F32)?;
        be.rmsnorm_forward(&mut xn1, &mut rstd1, x, &w.input_norm, c, cfg.rms_eps)?;
        let mut q = be.act_uninit(n * qd)?;
        let mut k = be.act_uninit(n * kvd)?;
        let mut v = be.act_uninit(n * kvd)?;
        if cfg.fused_proj {
            let mut qkv = be.act_uninit(n * (qd + 2 * kvd))?; // (N, Hq*D + 2*Hkv*D)
            lin(Target::Qkv, Some(&mut qkv), &xn1)?;
            self.split_columns(&qkv, &mut [(&mut q, qd), (&mut k, kvd), (&mut v, kvd)], n)?;
        } else {
            lin(Target::Q, Some(&mut q), &xn1)?;
            lin(Target::K, Some(&mut k), &xn1)?;
            lin(Target::V, Some(&mut v), &xn1)?;
        }
        // Qwen3 / Gemma 3: RMSNorm over each head's D values, rows (N*H, D), before RoPE.
        let qk_norm = match &w.qk_norm {
            Some(norm) => {
                let q_pre = std::mem::replace(&mut q, be.act_uninit(n * qd)?);
                let k_pre = std::mem::replace(&mut k, be.act_uninit(n * kvd)?);
                let mut rstd_q = be.uninit_as(n * cfg.heads, DType::F32)?;
                let mut rstd_k = be.uninit_as(n * cfg.kv_heads, DType::F32)?;
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
        let rope = self.rope_for(l, batch.positions);
        let rot = cfg.rope_dims;
        be.rope_partial_forward(
            &mut q,
            batch.positions,
            &rope.cos,
            &rope.sin,
            cfg.heads,
            d,
            rot,
        )?;
        be.rope_partial_forward(
            &mut k,
            batch.positions,
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
        let (att, lse) = match attention {
            Some(kept) => kept,
            None => {
                let mut att = be.act_uninit(n * qd)?;
                let mut lse = be.uninit_as(n * cfg.heads, DType::F32)?;
                be.attention_forward_capped(
                    &mut att,
                    &mut lse,
                    &q,
                    &k,
                    &v,
                    batch.cu_seqlens,
                    cfg.heads,
                    cfg.kv_heads,
                    d,
                    cfg.window(l),
                    cfg.attn_softcap,
                )?;
                (att, lse)
            }
        };
        let mut x2 = be.act_uninit(n * c)?;
        let attn_out = match &w.sandwich {
            Some(norms) => {
                let mut a = be.act_uninit(n * c)?; // (N, C)
                lin(Target::O, Some(&mut a), &att)?;
                let mut rstd = be.uninit_as(n, DType::F32)?;
                be.rmsnorm_forward(&mut x2, &mut rstd, &a, &norms.attn_out, c, cfg.rms_eps)?;
                Some((a, rstd))
            }
            None => {
                lin(Target::O, Some(&mut x2), &att)?;
                None
            }
        };
        be.axpy(&mut x2, 1.0, x)?;

        let mut xn2 = be.act_uninit(n * c)?;
        let mut rstd2 = be.uninit_as(n, DType::F32)?;
        be.rmsnorm_forward(&mut xn2, &mut rstd2, &x2, &w.mlp_norm, c, cfg.rms_eps)?;
        let mut g = be.act_uninit(n * f)?;
        let mut u = be.act_uninit(n * f)?;
        if cfg.fused_proj {
            let mut gu = be.act_uninit(n * 2 * f)?; // (N, 2F): gate, then up
            lin(Target::GateUp, Some(&mut gu), &xn2)?;
            self.split_columns(&gu, &mut [(&mut g, f), (&mut u, f)], n)?;
        } else {
            lin(Target::Gate, Some(&mut g), &xn2)?;
            lin(Target::Up, Some(&mut u), &xn2)?;
        }
        let mut h = be.act_uninit(n * f)?;
        match cfg.mlp_act {
            MlpAct::Silu => be.swiglu_forward(&mut h, &g, &u)?,
            MlpAct::GeluTanh => be.geglu_forward(&mut h, &g, &u)?,
        }
        let mlp_out = match &w.sandwich {
            // The norm's input and rstd are kept for backward, so the GEMM runs even when
            // nothing reads `out`.
            Some(norms) => {
                let mut m = be.act_uninit(n * c)?; // (N, C)
                lin(Target::Down, Some(&mut m), &h)?;
                let mut rstd = be.uninit_as(n, DType::F32)?;
                match out {
                    Some(out) => {
                        be.rmsnorm_forward(out, &mut rstd, &m, &norms.mlp_out, c, cfg.rms_eps)?;
                        be.axpy(out, 1.0, &x2)?;
                    }
                    None => {
                        let mut normed = be.act_uninit(n * c)?;
                        be.rmsnorm_forward(
                            &mut normed,
                            &mut rstd,
                            &m,
                            &norms.mlp_out,
                            c,
                            cfg.rms_eps,
                        )?;
                    }
                }
                Some((m, rstd))
            }
            None => {
                match out {
                    Some(out) => {
                        lin(Target::Down, Some(&mut *out), &h)?;
                        be.axpy(out, 1.0, &x2)?;
                    }
                    None => lin(Target::Down, None, &h)?,
                }
                None
            }
        };

        Ok(LayerActs {
            xn1,
            rstd1,
            q,
            k,
            v,
            att,
            lse,
            attn_out,
            x2,
            xn2,
            rstd2,
            g,
            u,
            h,
            mlp_out,
            qk_norm,
            lora: saved,
        })
    }

    /// Backward of layer `l`: from dout (N, C) writes dx (N, C) when asked for, and adds the
    /// layer's LoRA gradients into `lora`. Takes the activations by value and frees each as
    /// soon as the walk back has passed its last use, so one layer's backward peaks low.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_backward(
        &self,
        l: usize,
        x: &B::Buf,
        acts: LayerActs<B>,
        dout: &B::Buf,
        dx: Option<&mut B::Buf>,
        lora: &mut LoraParams<B>,
        batch: &TokenBatch<'_>,
        ctx: &StepCtx,
    ) -> Result<()> {
        let be = &*self.be;
        let cfg = &self.cfg;
        let w = &self.weights.layers[l];
        let n = batch.len();
        let (c, f, d) = (cfg.hidden, cfg.intermediate, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let scale = lora.config.scale();
        let dropout = if ctx.training {
            lora.config.dropout
        } else {
            0.0
        };
        let LayerActs {
            xn1,
            rstd1,
            q,
            k,
            v,
            att,
            lse,
            attn_out,
            x2,
            xn2,
            rstd2,
            g,
            u,
            h,
            mlp_out,
            qk_norm,
            lora: mut saved,
        } = acts;
        let mut lin_bwd = |t: Target,
                           dxin: Option<&mut B::Buf>,
                           accumulate: bool,
                           dy: &B::Buf,
                           input: &B::Buf|
         -> Result<()> {
            let kept = saved[t.index()].take();
            let adapter = match (lora.get_mut(l, t), kept.as_ref()) {
                (Some((a, b)), Some(kept)) => Some((
                    LoraMut {
                        a,
                        b,
                        scale,
                        dropout,
                        seed: ctx.dropout_seed(l, t),
                    },
                    kept,
                )),
                _ => None,
            };
            linear_backward(be, dxin, accumulate, dy, input, w.linear(t)?, n, adapter)
        };

        // out = x2 + m, m = down(h) (Gemma 2/3: m = rmsnorm(down(h)))
        let mut dh = be.act_uninit(n * f)?;
        match (mlp_out, &w.sandwich) {
            (Some((m, rstd)), Some(norms)) => {
                let mut dm = be.act_uninit(n * c)?;
                be.rmsnorm_backward(&mut dm, dout, &m, &norms.mlp_out, &rstd, c)?;
                drop((m, rstd));
                lin_bwd(Target::Down, Some(&mut dh), false, &dm, &h)?;
            }
            _ => lin_bwd(Target::Down, Some(&mut dh), false, dout, &h)?,
        }
        drop(h);
        // h = act(g) * u
        let mut dg = be.act_uninit(n * f)?;
        let mut du = be.act_uninit(n * f)?;
        match cfg.mlp_act {
            MlpAct::Silu => be.swiglu_backward(&mut dg, &mut du, &dh, &g, &u)?,
            MlpAct::GeluTanh => be.geglu_backward(&mut dg, &mut du, &dh, &g, &u)?,
        }
        drop((dh, g, u));
        // g, u = gate(xn2), up(xn2)
        let mut dxn2 = be.act_uninit(n * c)?;
        if cfg.fused_proj {
            let dgu = self.join_columns(&[(&dg, f), (&du, f)], n)?;
            drop((dg, du));
            lin_bwd(Target::GateUp, Some(&mut dxn2), false, &dgu, &xn2)?;
        } else {
            lin_bwd(Target::Gate, Some(&mut dxn2), false, &dg, &xn2)?;
            drop(dg);
            lin_bwd(Target::Up, Some(&mut dxn2), true, &du, &xn2)?;
        }
        drop(xn2);
        // xn2 = rmsnorm(x2); x2 also flows straight to out
        let mut dx2 = be.act_uninit(n * c)?;
        be.rmsnorm_backward(&mut dx2, &dxn2, &x2, &w.mlp_norm, &rstd2, c)?;
        be.axpy(&mut dx2, 1.0, dout)?;
        drop((dxn2, x2, rstd2));

        // x2 = x + a, a = o(att) (Gemma 2/3: a = rmsnorm(o(att)))
        let mut datt = be.act_uninit(n * qd)?;
        match (attn_out, &w.sandwich) {
            (Some((a, rstd)), Some(norms)) => {
                let mut da = be.act_uninit(n * c)?;
                be.rmsnorm_backward(&mut da, &dx2, &a, &norms.attn_out, &rstd, c)?;
                drop((a, rstd));
                lin_bwd(Target::O, Some(&mut datt), false, &da, &att)?;
            }
            _ => lin_bwd(Target::O, Some(&mut datt), false, &dx2, &att)?,
        }
        // att = attention(q, k, v)
        let mut dq = be.act_uninit(n * qd)?;
        let mut dk = be.act_uninit(n * kvd)?;
        let mut dv = be.act_uninit(n * kvd)?;
        be.attention_backward_capped(
            &mut dq,
            &mut dk,
            &mut dv,
            &datt,
            &q,
            &k,
            &v,
            &att,
            &lse,
            batch.cu_seqlens,
            cfg.heads,
            cfg.kv_heads,
            d,
            cfg.window(l),
            cfg.attn_softcap,
        )?;
        drop((datt, q, k, v, att, lse));
        // q *= the query scale
        let q_mult = self.q_multiplier();
        if q_mult != 1.0 {
            be.scale(&mut dq, q_mult)?;
        }
        // q, k = rope(q), rope(k)
        let rope = self.rope_for(l, batch.positions);
        let rot = cfg.rope_dims;
        be.rope_partial_backward(
            &mut dq,
            batch.positions,
            &rope.cos,
            &rope.sin,
            cfg.heads,
            d,
            rot,
        )?;
        be.rope_partial_backward(
            &mut dk,
            batch.positions,
            &rope.cos,
            &rope.sin,
            cfg.kv_heads,
            d,
            rot,
        )?;
        // q, k = rmsnorm(q_pre), rmsnorm(k_pre) per head (Qwen3, Gemma 3)
        if let (Some(acts), Some(norm)) = (qk_norm, &w.qk_norm) {
            let mut dq_pre = be.act_uninit(n * qd)?;
            let mut dk_pre = be.act_uninit(n * kvd)?;
            be.rmsnorm_backward(&mut dq_pre, &dq, &acts.q_pre, &norm.q, &acts.rstd_q, d)?;
            be.rmsnorm_backward(&mut dk_pre, &dk, &acts.k_pre, &norm.k, &acts.rstd_k, d)?;
            dq = dq_pre;
            dk = dk_pre;
        }
        // q, k, v = proj(xn1); xn1 = rmsnorm(x); x also flows straight to x2
        let dqkv = if cfg.fused_proj {
            Some(self.join_columns(&[(&dq, qd), (&dk, kvd), (&dv, kvd)], n)?)
        } else {
            None
        };
        match dx {
            Some(dx) => {
                let mut dxn1 = be.act_uninit(n * c)?;
                if let Some(dqkv) = &dqkv {
                    lin_bwd(Target::Qkv, Some(&mut dxn1), false, dqkv, &xn1)?;
                } else {
                    lin_bwd(Target::Q, Some(&mut dxn1), false, &dq, &xn1)?;
                    lin_bwd(Target::K, Some(&mut dxn1), true, &dk, &xn1)?;
                    lin_bwd(Target::V, Some(&mut dxn1), true, &dv, &xn1)?;
                }
                be.rmsnorm_backward(dx, &dxn1, x, &w.input_norm, &rstd1, c)?;
                be.axpy(dx, 1.0, &dx2)?;
            }
            None => {
                // The first layer's input is the frozen embedding: only LoRA grads are needed.
                if let Some(dqkv) = &dqkv {
                    lin_bwd(Target::Qkv, None, false, dqkv, &xn1)?;
                } else {
                    lin_bwd(Target::Q, None, false, &dq, &xn1)?;
                    lin_bwd(Target::K, None, false, &dk, &xn1)?;
                    lin_bwd(Target::V, None, false, &dv, &xn1)?;
                }
            }
        }
        Ok(())
    }
}
