//! The layer's backward: the forward's lines walked bottom-up, reading the kept
//! [`LayerActs`]. Frozen weights get no gradient; LoRA gradients are added into the adapter.

use temper_core::Backend;

use crate::batch::StepCtx;
use crate::error::Result;
use crate::layer::columns::join_columns;
use crate::layer::{DecoderLayer, LayerActs, Rows};
use crate::lora::{LoraParams, Target};

impl<B: Backend> DecoderLayer<'_, B> {
    /// The backward of [`DecoderLayer::forward`] over the packed sequences of `cu_seqlens`
    /// (S+1): from dout (N, C) writes dx (N, C) when asked for, and adds the layer's LoRA
    /// gradients into `lora`. Takes the activations by value and frees each as soon as the
    /// walk back has passed its last use, so one layer's backward peaks low.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        x: &B::Buf,
        acts: LayerActs<B>,
        dout: &B::Buf,
        dx: Option<&mut B::Buf>,
        lora: &mut LoraParams<B>,
        cu_seqlens: &[u32],
        ctx: &StepCtx,
    ) -> Result<()> {
        let (be, cfg, w) = (self.be, self.cfg, self.weights);
        let (l, n) = (self.index, self.tokens());
        let (c, d) = (cfg.hidden, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
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
            mlp,
            qk_norm,
            lora: mut saved,
        } = acts;

        // The MLP and the residual around it: out = x2 + mlp(x2).
        let dx2 = match mlp {
            Some(mlp) => self.mlp_backward(mlp, &x2, dout, Rows::all(n), lora, ctx)?,
            None => self.mlp_backward_tiled(&x2, dout, lora, ctx)?,
        };
        drop(x2);

        let mut lin_bwd = |t: Target,
                           dxin: Option<&mut B::Buf>,
                           accumulate: bool,
                           dy: &B::Buf,
                           input: &B::Buf|
         -> Result<()> {
            self.linear_backward(
                t,
                &mut saved,
                lora,
                ctx,
                Rows::all(n),
                dxin,
                accumulate,
                dy,
                input,
            )
        };

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
            cu_seqlens,
            cfg.attn_shape(),
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
        let (positions, rope, rot) = (self.positions, self.rope, cfg.rope_dims);
        be.rope_partial_backward(&mut dq, positions, &rope.cos, &rope.sin, cfg.heads, d, rot)?;
        be.rope_partial_backward(
            &mut dk,
            positions,
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
            Some(join_columns(be, &[(&dq, qd), (&dk, kvd), (&dv, kvd)], n)?)
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
