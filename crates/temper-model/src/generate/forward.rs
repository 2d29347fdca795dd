//! The inference forward with a KV cache: new tokens only, keys and values of earlier
//! positions read from the cache. The same ops as [`Model::layer_forward`] (LoRA through the
//! same `linear_forward`, unmerged), with cache-based attention and nothing kept for backward.
//!
//! per layer, for the n new tokens at positions past..past+n:
//!   xn1 = rmsnorm(x);  q, k, v = proj(xn1) (+ LoRA);  (Qwen3) q, k = rmsnorm per head
//!   q, k = rope(q), rope(k)
//!   cache[past..past+n] = k, v;  att = attention_decode(q, cache, past);  x2 = x + o(att)
//!   (a layer with a sliding window shorter than the positions so far reads only the last
//!   `window` keys: the prompt through the windowed training attention, each later token
//!   through the last `window` rows of the cache)
//!   xn2 = rmsnorm(x2);  out = x2 + down(act(gate(xn2)) * up(xn2))
//! with each family's variations as in [`Model::layer_forward`] (fused projections, Gemma's
//! extra norms, query scale, soft caps, local RoPE tables).

use temper_core::{Backend, CoreError, Gemm};

use crate::config::MlpAct;

use crate::error::{ModelError, Result};
use crate::generate::KvCache;
use crate::linear::{linear_forward, LoraRef};
use crate::lora::{LoraParams, Target};
use crate::model::Model;

fn invalid(msg: String) -> ModelError {
    ModelError::Core(CoreError::Invalid {
        op: "forward_cached",
        msg,
    })
}

impl<B: Backend> Model<B> {
    /// Runs `ids` (n) at positions cache.len()..cache.len()+n, appends their keys and values
    /// to `cache`, and returns the logits (V) of the last of them.
    pub fn forward_cached(
        &self,
        lora: Option<&LoraParams<B>>,
        ids: &[u32], // (n)
        cache: &mut KvCache<B>,
    ) -> Result<Vec<f32>> {
        let be = &*self.be;
        let (n, c, v) = (ids.len(), self.cfg.hidden, self.cfg.vocab);
        let past = cache.len();
        if n == 0 {
            return Err(invalid("no tokens to run".into()));
        }
        if past + n > cache.capacity() {
            return Err(invalid(format!(
                "{past} cached + {n} new positions exceed the cache's capacity {}",
                cache.capacity()
            )));
        }
        if past + n > self.cfg.max_positions {
            return Err(invalid(format!(
                "{past} cached + {n} new positions exceed max_position_embeddings {} of config.json",
                self.cfg.max_positions
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= v) {
            return Err(invalid(format!(
                "token id {bad} is outside the vocabulary of {v}"
            )));
        }
        let positions: Vec<u32> = (past..past + n).map(|p| p as u32).collect(); // (n)

        let mut x = self.embed_ids(ids)?; // (n, C)
        for l in 0..self.cfg.layers {
            let mut out = be.act_zeros(n * c)?; // (n, C)
            self.layer_cached(l, &x, &mut out, lora, &positions, cache)?;
            x = out;
        }
        cache.advance(n);

        // Only the last token's logits are needed: final norm and head on its row alone.
        let mut last = be.act_zeros(c)?; // (1, C)
        be.copy_range(&mut last, 0, &x, (n - 1) * c, c)?;
        let mut xf = be.act_zeros(c)?; // (1, C)
        let mut rstd = be.zeros(1)?;
        be.rmsnorm_forward(
            &mut xf,
            &mut rstd,
            &last,
            &self.weights.final_norm,
            c,
            self.cfg.rms_eps,
        )?;
        let mut logits = be.zeros(v)?; // (1, V)
        be.matmul(&mut logits, &xf, self.weights.head(), Gemm::nt(1, v, c))?;
        let mut logits = be.download(&logits)?;
        self.cap_logits(&mut logits);
        Ok(logits)
    }

    /// Layer `l` on the new tokens x (n, C), writing out (n, C) and their k, v into the cache
    /// at rows past..past+n (the cache's length is advanced by the caller, after all layers).
    fn layer_cached(
        &self,
        l: usize,
        x: &B::Buf,
        out: &mut B::Buf,
        lora: Option<&LoraParams<B>>,
        positions: &[u32], // (n)
        cache: &mut KvCache<B>,
    ) -> Result<()> {
        let be = &*self.be;
        let cfg = &self.cfg;
        let w = &self.weights.layers[l];
        let n = positions.len();
        let past = cache.len();
        let (c, f, d) = (cfg.hidden, cfg.intermediate, cfg.head_dim);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let lin = |t: Target, y: &mut B::Buf, input: &B::Buf| -> Result<()> {
            let adapter = lora.and_then(|p| {
                p.get(l, t).map(|(a, b)| LoraRef {
                    a,
                    b,
                    scale: p.config.scale(),
                    dropout: 0.0,
                    seed: 0,
                })
            });
            linear_forward(be, y, input, w.linear(t)?, n, adapter)?;
            Ok(())
        };

        let mut xn1 = be.act_zeros(n * c)?; // (n, C)
        let mut rstd = be.zeros(n)?; // (n)
        be.rmsnorm_forward(&mut xn1, &mut rstd, x, &w.input_norm, c, cfg.rms_eps)?;
        let mut q = be.act_zeros(n * qd)?; // (n, Hq*D)
        let mut k = be.act_zeros(n * kvd)?; // (n, Hkv*D)
        let mut v = be.act_zeros(n * kvd)?; // (n, Hkv*D)
        if cfg.fused_proj {
            let mut qkv = be.act_zeros(n * (qd + 2 * kvd))?; // (n, Hq*D + 2*Hkv*D)
            lin(Target::Qkv, &mut qkv, &xn1)?;
            self.split_columns(&qkv, &mut [(&mut q, qd), (&mut k, kvd), (&mut v, kvd)], n)?;
        } else {
            lin(Target::Q, &mut q, &xn1)?;
            lin(Target::K, &mut k, &xn1)?;
            lin(Target::V, &mut v, &xn1)?;
        }
        drop(xn1);
        if let Some(norm) = &w.qk_norm {
            let (q_pre, k_pre) = (
                std::mem::replace(&mut q, be.act_zeros(n * qd)?),
                std::mem::replace(&mut k, be.act_zeros(n * kvd)?),
            );
            let mut rstd_q = be.zeros(n * cfg.heads)?; // (n*Hq)
            let mut rstd_k = be.zeros(n * cfg.kv_heads)?; // (n*Hkv)
            be.rmsnorm_forward(&mut q, &mut rstd_q, &q_pre, &norm.q, d, cfg.rms_eps)?;
            be.rmsnorm_forward(&mut k, &mut rstd_k, &k_pre, &norm.k, d, cfg.rms_eps)?;
        }
        let rope = self.rope_for(l, positions);
        let rot = cfg.rope_dims;
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
        be.copy_range(&mut cache.k[l], past * kvd, &k, 0, n * kvd)?;
        be.copy_range(&mut cache.v[l], past * kvd, &v, 0, n * kvd)?;
        let mut att = be.act_zeros(n * qd)?; // (n, Hq*D)
        let cap = cfg.attn_softcap;
        match cfg.window(l).filter(|&win| past + n > win) {
            None => be.attention_decode_capped(
                &mut att,
                &q,
                &cache.k[l],
                &cache.v[l],
                past,
                cfg.heads,
                cfg.kv_heads,
                d,
                cap,
            )?,
            // A prompt longer than the window: the training attention with its window.
            Some(win) if past == 0 => {
                let mut lse = be.zeros(n * cfg.heads)?; // (n, Hq)
                let cu = [0, n as u32];
                be.attention_forward_capped(
                    &mut att,
                    &mut lse,
                    &q,
                    &k,
                    &v,
                    &cu,
                    cfg.heads,
                    cfg.kv_heads,
                    d,
                    Some(win),
                    cap,
                )?;
            }
            // One new token: the cache's last `win` rows, itself included.
            Some(win) if n == 1 => {
                let mut kw = be.act_zeros(win * kvd)?; // (win, Hkv*D)
                let mut vw = be.act_zeros(win * kvd)?;
                let first = past + 1 - win;
                be.copy_range(&mut kw, 0, &cache.k[l], first * kvd, win * kvd)?;
                be.copy_range(&mut vw, 0, &cache.v[l], first * kvd, win * kvd)?;
                be.attention_decode_capped(
                    &mut att,
                    &q,
                    &kw,
                    &vw,
                    win - 1,
                    cfg.heads,
                    cfg.kv_heads,
                    d,
                    cap,
                )?;
            }
            Some(win) => {
                return Err(invalid(format!(
                    "{n} new tokens after {past} cached pass layer {l}'s sliding_window of {win}: \
                     run them one at a time"
                )))
            }
        }
        drop((q, k, v));
        let mut x2 = be.act_zeros(n * c)?; // (n, C)
        match &w.sandwich {
            Some(norms) => {
                let mut a = be.act_zeros(n * c)?; // (n, C)
                lin(Target::O, &mut a, &att)?;
                be.rmsnorm_forward(&mut x2, &mut rstd, &a, &norms.attn_out, c, cfg.rms_eps)?;
            }
            None => lin(Target::O, &mut x2, &att)?,
        }
        be.axpy(&mut x2, 1.0, x)?;
        drop(att);

        let mut xn2 = be.act_zeros(n * c)?; // (n, C)
        be.rmsnorm_forward(&mut xn2, &mut rstd, &x2, &w.mlp_norm, c, cfg.rms_eps)?;
        let mut g = be.act_zeros(n * f)?; // (n, F)
        let mut u = be.act_zeros(n * f)?; // (n, F)
        if cfg.fused_proj {
            let mut gu = be.act_zeros(n * 2 * f)?; // (n, 2F)
            lin(Target::GateUp, &mut gu, &xn2)?;
            self.split_columns(&gu, &mut [(&mut g, f), (&mut u, f)], n)?;
        } else {
            lin(Target::Gate, &mut g, &xn2)?;
            lin(Target::Up, &mut u, &xn2)?;
        }
        let mut h = be.act_zeros(n * f)?; // (n, F)
        match cfg.mlp_act {
            MlpAct::Silu => be.swiglu_forward(&mut h, &g, &u)?,
            MlpAct::GeluTanh => be.geglu_forward(&mut h, &g, &u)?,
        }
        match &w.sandwich {
            Some(norms) => {
                let mut m = be.act_zeros(n * c)?; // (n, C)
                lin(Target::Down, &mut m, &h)?;
                be.rmsnorm_forward(out, &mut rstd, &m, &norms.mlp_out, c, cfg.rms_eps)?;
            }
            None => lin(Target::Down, out, &h)?,
        }
        be.axpy(out, 1.0, &x2)?;
        Ok(())
    }
}
