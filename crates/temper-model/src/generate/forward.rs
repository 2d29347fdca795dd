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
//!   xn2 = rmsnorm(x2);  out = x2 + down(silu(gate(xn2)) * up(xn2))

use temper_core::{Backend, CoreError, Gemm};

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

        let mut x = be.act_zeros(n * c)?; // (n, C)
        be.embedding_forward(&mut x, ids, &self.weights.embed, c)?;
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
        Ok(be.download(&logits)?)
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
            linear_forward(be, y, input, w.linear(t), n, adapter)?;
            Ok(())
        };

        let mut xn1 = be.act_zeros(n * c)?; // (n, C)
        let mut rstd = be.zeros(n)?; // (n)
        be.rmsnorm_forward(&mut xn1, &mut rstd, x, &w.input_norm, c, cfg.rms_eps)?;
        let mut q = be.act_zeros(n * qd)?; // (n, Hq*D)
        let mut k = be.act_zeros(n * kvd)?; // (n, Hkv*D)
        let mut v = be.act_zeros(n * kvd)?; // (n, Hkv*D)
        lin(Target::Q, &mut q, &xn1)?;
        lin(Target::K, &mut k, &xn1)?;
        lin(Target::V, &mut v, &xn1)?;
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
        be.rope_forward(
            &mut q,
            positions,
            &self.rope_cos,
            &self.rope_sin,
            cfg.heads,
            d,
        )?;
        be.rope_forward(
            &mut k,
            positions,
            &self.rope_cos,
            &self.rope_sin,
            cfg.kv_heads,
            d,
        )?;
        be.copy_range(&mut cache.k[l], past * kvd, &k, 0, n * kvd)?;
        be.copy_range(&mut cache.v[l], past * kvd, &v, 0, n * kvd)?;
        let mut att = be.act_zeros(n * qd)?; // (n, Hq*D)
        match cfg.window(l).filter(|&win| past + n > win) {
            None => be.attention_decode(
                &mut att,
                &q,
                &cache.k[l],
                &cache.v[l],
                past,
                cfg.heads,
                cfg.kv_heads,
                d,
            )?,
            // A prompt longer than the window: the training attention with its window.
            Some(win) if past == 0 => {
                let mut lse = be.zeros(n * cfg.heads)?; // (n, Hq)
                let cu = [0, n as u32];
                be.attention_forward(
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
                )?;
            }
            // One new token: the cache's last `win` rows, itself included.
            Some(win) if n == 1 => {
                let mut kw = be.act_zeros(win * kvd)?; // (win, Hkv*D)
                let mut vw = be.act_zeros(win * kvd)?;
                let first = past + 1 - win;
                be.copy_range(&mut kw, 0, &cache.k[l], first * kvd, win * kvd)?;
                be.copy_range(&mut vw, 0, &cache.v[l], first * kvd, win * kvd)?;
                be.attention_decode(&mut att, &q, &kw, &vw, win - 1, cfg.heads, cfg.kv_heads, d)?;
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
        lin(Target::O, &mut x2, &att)?;
        be.axpy(&mut x2, 1.0, x)?;
        drop(att);

        let mut xn2 = be.act_zeros(n * c)?; // (n, C)
        be.rmsnorm_forward(&mut xn2, &mut rstd, &x2, &w.post_attn_norm, c, cfg.rms_eps)?;
        let mut g = be.act_zeros(n * f)?; // (n, F)
        let mut u = be.act_zeros(n * f)?; // (n, F)
        lin(Target::Gate, &mut g, &xn2)?;
        lin(Target::Up, &mut u, &xn2)?;
        let mut h = be.act_zeros(n * f)?; // (n, F)
        be.swiglu_forward(&mut h, &g, &u)?;
        lin(Target::Down, out, &h)?;
        be.axpy(out, 1.0, &x2)?;
        Ok(())
    }
}
