//! One decoder layer (pre-norm attention + pre-norm SwiGLU MLP), forward and backward.
//!
//! forward:
//!   xn1 = rmsnorm(x, w1);  q, k, v = xn1 Wq^T, xn1 Wk^T, xn1 Wv^T (+ bias, + LoRA)
//!   (Qwen3) q, k = rmsnorm(q, wq), rmsnorm(k, wk) over each head's D values
//!   q, k = rope(q), rope(k);  att = attention(q, k, v);  x2 = x + att Wo^T
//!   (attention within the layer's sliding window, when it has one)
//!   xn2 = rmsnorm(x2, w2);  g, u = xn2 Wg^T, xn2 Wu^T;  h = silu(g) * u;  out = x2 + h Wd^T
//! backward walks the same lines bottom-up.

use temper_core::{Backend, DType};

use crate::error::Result;
use crate::linear::{linear_backward, linear_forward_opt, LoraMut, LoraRef, LoraSaved};
use crate::lora::{LoraParams, Target};
use crate::model::{Model, StepCtx, TokenBatch};

/// Everything a layer's backward reads, for N tokens. With gradient checkpointing this is
/// rebuilt from the layer's input just before its backward.
pub struct LayerActs<B: Backend> {
    pub xn1: B::Buf,   // (N, C)
    pub rstd1: B::Buf, // (N)
    pub q: B::Buf,     // (N, Hq*D) after RoPE
    pub k: B::Buf,     // (N, Hkv*D) after RoPE
    pub v: B::Buf,     // (N, Hkv*D)
    pub att: B::Buf,   // (N, Hq*D)
    pub lse: B::Buf,   // (N, Hq)
    pub x2: B::Buf,    // (N, C)
    pub xn2: B::Buf,   // (N, C)
    pub rstd2: B::Buf, // (N)
    pub g: B::Buf,     // (N, F)
    pub u: B::Buf,     // (N, F)
    pub h: B::Buf,     // (N, F)
    /// The per-head q/k norms' inputs and statistics (Qwen3).
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
    /// skips the last projection's base GEMM and the residual add, which nothing reads. With
    /// `attention` (att (N, Hq*D), lse (N, Hq) kept from the first forward) it also skips
    /// the attention forward.
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
        let mut saved: Vec<Option<LoraSaved<B>>> = (0..7).map(|_| None).collect();
        let mut lin = |t: Target, y: Option<&mut B::Buf>, input: &B::Buf| -> Result<()> {
            let adapter = self.lora_ref(lora, l, t, ctx);
            saved[t.index()] = linear_forward_opt(be, y, input, w.linear(t), n, adapter)?;
            Ok(())
        };

        let mut xn1 = be.act_uninit(n * c)?;
        let mut rstd1 = be.uninit_as(n, DType::F32)?;
        be.rmsnorm_forward(&mut xn1, &mut rstd1, x, &w.input_norm, c, cfg.rms_eps)?;
        let mut q = be.act_uninit(n * qd)?;
        let mut k = be.act_uninit(n * kvd)?;
        let mut v = be.act_uninit(n * kvd)?;
        lin(Target::Q, Some(&mut q), &xn1)?;
        lin(Target::K, Some(&mut k), &xn1)?;
        lin(Target::V, Some(&mut v), &xn1)?;
        // Qwen3: RMSNorm over each head's D values, rows (N*H, D), before RoPE.
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
        be.rope_forward(
            &mut q,
            batch.positions,
            &self.rope_cos,
            &self.rope_sin,
            cfg.heads,
            d,
        )?;
        be.rope_forward(
            &mut k,
            batch.positions,
            &self.rope_cos,
            &self.rope_sin,
            cfg.kv_heads,
            d,
        )?;
        let (att, lse) = match attention {
            Some(kept) => kept,
            None => {
                let mut att = be.act_uninit(n * qd)?;
                let mut lse = be.uninit_as(n * cfg.heads, DType::F32)?;
                be.attention_forward(
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
                )?;
                (att, lse)
            }
        };
        let mut x2 = be.act_uninit(n * c)?;
        lin(Target::O, Some(&mut x2), &att)?;
        be.axpy(&mut x2, 1.0, x)?;

        let mut xn2 = be.act_uninit(n * c)?;
        let mut rstd2 = be.uninit_as(n, DType::F32)?;
        be.rmsnorm_forward(&mut xn2, &mut rstd2, &x2, &w.post_attn_norm, c, cfg.rms_eps)?;
        let mut g = be.act_uninit(n * f)?;
        let mut u = be.act_uninit(n * f)?;
        lin(Target::Gate, Some(&mut g), &xn2)?;
        lin(Target::Up, Some(&mut u), &xn2)?;
        let mut h = be.act_uninit(n * f)?;
        be.swiglu_forward(&mut h, &g, &u)?;
        match out {
            Some(out) => {
                lin(Target::Down, Some(&mut *out), &h)?;
                be.axpy(out, 1.0, &x2)?;
            }
            None => lin(Target::Down, None, &h)?,
        }

        Ok(LayerActs {
            xn1,
            rstd1,
            q,
            k,
            v,
            att,
            lse,
            x2,
            xn2,
            rstd2,
            g,
            u,
            h,
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
            x2,
            xn2,
            rstd2,
            g,
            u,
            h,
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
            linear_backward(be, dxin, accumulate, dy, input, w.linear(t), n, adapter)
        };

        // out = x2 + down(h)
        let mut dh = be.act_uninit(n * f)?;
        lin_bwd(Target::Down, Some(&mut dh), false, dout, &h)?;
        drop(h);
        // h = silu(g) * u
        let mut dg = be.act_uninit(n * f)?;
        let mut du = be.act_uninit(n * f)?;
        be.swiglu_backward(&mut dg, &mut du, &dh, &g, &u)?;
        drop((dh, g, u));
        // g, u = gate(xn2), up(xn2)
        let mut dxn2 = be.act_uninit(n * c)?;
        lin_bwd(Target::Gate, Some(&mut dxn2), false, &dg, &xn2)?;
        drop(dg);
        lin_bwd(Target::Up, Some(&mut dxn2), true, &du, &xn2)?;
        drop((du, xn2));
        // xn2 = rmsnorm(x2); x2 also flows straight to out
        let mut dx2 = be.act_uninit(n * c)?;
        be.rmsnorm_backward(&mut dx2, &dxn2, &x2, &w.post_attn_norm, &rstd2, c)?;
        be.axpy(&mut dx2, 1.0, dout)?;
        drop((dxn2, x2, rstd2));

        // x2 = x + o(att)
        let mut datt = be.act_uninit(n * qd)?;
        lin_bwd(Target::O, Some(&mut datt), false, &dx2, &att)?;
        // att = attention(q, k, v)
        let mut dq = be.act_uninit(n * qd)?;
        let mut dk = be.act_uninit(n * kvd)?;
        let mut dv = be.act_uninit(n * kvd)?;
        be.attention_backward(
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
        )?;
        drop((datt, q, k, v, att, lse));
        // q, k = rope(q), rope(k)
        be.rope_backward(
            &mut dq,
            batch.positions,
            &self.rope_cos,
            &self.rope_sin,
            cfg.heads,
            d,
        )?;
        be.rope_backward(
            &mut dk,
            batch.positions,
            &self.rope_cos,
            &self.rope_sin,
            cfg.kv_heads,
            d,
        )?;
        // q, k = rmsnorm(q_pre), rmsnorm(k_pre) per head (Qwen3)
        if let (Some(acts), Some(norm)) = (qk_norm, &w.qk_norm) {
            let mut dq_pre = be.act_uninit(n * qd)?;
            let mut dk_pre = be.act_uninit(n * kvd)?;
            be.rmsnorm_backward(&mut dq_pre, &dq, &acts.q_pre, &norm.q, &acts.rstd_q, d)?;
            be.rmsnorm_backward(&mut dk_pre, &dk, &acts.k_pre, &norm.k, &acts.rstd_k, d)?;
            dq = dq_pre;
            dk = dk_pre;
        }
        // q, k, v = proj(xn1); xn1 = rmsnorm(x); x also flows straight to x2
        match dx {
            Some(dx) => {
                let mut dxn1 = be.act_uninit(n * c)?;
                lin_bwd(Target::Q, Some(&mut dxn1), false, &dq, &xn1)?;
                lin_bwd(Target::K, Some(&mut dxn1), true, &dk, &xn1)?;
                lin_bwd(Target::V, Some(&mut dxn1), true, &dv, &xn1)?;
                be.rmsnorm_backward(dx, &dxn1, x, &w.input_norm, &rstd1, c)?;
                be.axpy(dx, 1.0, &dx2)?;
            }
            None => {
                // The first layer's input is the frozen embedding: only LoRA grads are needed.
                lin_bwd(Target::Q, None, false, &dq, &xn1)?;
                lin_bwd(Target::K, None, false, &dk, &xn1)?;
                lin_bwd(Target::V, None, false, &dv, &xn1)?;
            }
        }
        Ok(())
    }
}
