//! The one step of a layer that differs between training and generation: where the keys and
//! values come from.
//!
//!   varlen:  att = attention(q, k, v) causal within each packed sequence (cu_seqlens)
//!   cached:  cache[past..past+n] = k, v;  att = attention_decode(q, cache[0..past+n])
//!            (a layer whose sliding window is shorter than the positions so far reads only
//!            the last `window` keys: a prompt through the windowed varlen attention, each
//!            later token through the last `window` rows of the cache)
//! both within the layer's sliding window and with Gemma 2's score soft cap.

use temper_core::{Backend, CoreError, DType};

use crate::error::{ModelError, Result};
use crate::layer::DecoderLayer;

/// How a layer's attention finds its keys and values.
pub enum Attention<'a, B: Backend> {
    /// Training and evaluation: causal attention within each sequence of a packed batch.
    Varlen {
        cu_seqlens: &'a [u32], // (S+1)
        /// att (N, Hq*D) and lse (N, Hq) of an earlier forward over the same tokens: a
        /// recompute before the backward then skips the attention forward.
        kept: Option<(B::Buf, B::Buf)>,
        /// x + o_proj(att) (N, C) of that same forward (layers without sandwich norms): the
        /// recompute then skips o_proj's base product and the residual add too.
        residual: Option<B::Buf>,
        /// q (N, Hq*D), k and v (N, Hkv*D) of that same forward, after RoPE and the query
        /// scale (layers without per-head q/k norms): the recompute then skips the q, k and
        /// v projections' base products and RoPE.
        qkv: Option<[B::Buf; 3]>,
    },
    /// Generation: the N new tokens follow `past` cached positions of one sequence. Their
    /// keys and values are written to rows past..past+N of the layer's cache, and attention
    /// reads rows 0..past+N.
    Cached {
        k: &'a mut B::Buf, // (capacity, Hkv*D) keys after RoPE
        v: &'a mut B::Buf, // (capacity, Hkv*D)
        past: usize,
    },
}

fn invalid(msg: String) -> ModelError {
    ModelError::Core(CoreError::Invalid {
        op: "forward_cached",
        msg,
    })
}

impl<B: Backend> DecoderLayer<'_, B> {
    /// att (N, Hq*D) from q (N, Hq*D), k, v (N, Hkv*D), after RoPE and the query scale; with
    /// the log-sum-exp (N, Hq) when the attention op made one (varlen attention; the cached
    /// one only for a prompt longer than the window).
    pub(super) fn attend(
        &self,
        mode: Attention<'_, B>,
        q: &B::Buf,
        k: &B::Buf,
        v: &B::Buf,
    ) -> Result<(B::Buf, Option<B::Buf>)> {
        match mode {
            Attention::Varlen {
                kept: Some((att, lse)),
                ..
            } => Ok((att, Some(lse))),
            Attention::Varlen {
                cu_seqlens,
                kept: None,
                ..
            } => {
                let window = self.cfg.window(self.index);
                let (att, lse) = self.attend_varlen(q, k, v, cu_seqlens, window)?;
                Ok((att, Some(lse)))
            }
            Attention::Cached {
                k: k_cache,
                v: v_cache,
                past,
            } => self.attend_cached(q, k, v, k_cache, v_cache, past),
        }
    }

    /// Causal attention within each sequence of `cu_seqlens` (S+1): (att (N, Hq*D), lse (N, Hq)).
    fn attend_varlen(
        &self,
        q: &B::Buf,
        k: &B::Buf,
        v: &B::Buf,
        cu_seqlens: &[u32],
        window: Option<usize>,
    ) -> Result<(B::Buf, B::Buf)> {
        let (be, cfg, n) = (self.be, self.cfg, self.tokens());
        let mut att = be.act_uninit(n * cfg.q_dim())?;
        let mut lse = be.uninit_as(n * cfg.heads, DType::F32)?;
        be.attention_forward_capped(
            &mut att,
            &mut lse,
            q,
            k,
            v,
            cu_seqlens,
            cfg.attn_shape(),
            window,
            cfg.attn_softcap,
        )?;
        Ok((att, lse))
    }

    /// Appends k, v (N, Hkv*D) to the cache at rows past..past+N and attends q against it.
    fn attend_cached(
        &self,
        q: &B::Buf,
        k: &B::Buf,
        v: &B::Buf,
        k_cache: &mut B::Buf,
        v_cache: &mut B::Buf,
        past: usize,
    ) -> Result<(B::Buf, Option<B::Buf>)> {
        let (be, cfg, n, l) = (self.be, self.cfg, self.tokens(), self.index);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let cap = cfg.attn_softcap;
        be.copy_range(k_cache, past * kvd, k, 0, n * kvd)?;
        be.copy_range(v_cache, past * kvd, v, 0, n * kvd)?;
        match cfg.window(l).filter(|&win| past + n > win) {
            None => {
                let mut att = be.act_uninit(n * qd)?; // (n, Hq*D)
                be.attention_decode_capped(
                    &mut att,
                    q,
                    k_cache,
                    v_cache,
                    past,
                    cfg.attn_shape(),
                    cap,
                )?;
                Ok((att, None))
            }
            // A prompt longer than the window: the training attention with its window.
            Some(win) if past == 0 => {
                let (att, lse) = self.attend_varlen(q, k, v, &[0, n as u32], Some(win))?;
                Ok((att, Some(lse)))
            }
            // One new token: the cache's last `win` rows, itself included.
            Some(win) if n == 1 => {
                let mut kw = be.act_uninit(win * kvd)?; // (win, Hkv*D)
                let mut vw = be.act_uninit(win * kvd)?;
                let first = past + 1 - win;
                be.copy_range(&mut kw, 0, k_cache, first * kvd, win * kvd)?;
                be.copy_range(&mut vw, 0, v_cache, first * kvd, win * kvd)?;
                let mut att = be.act_uninit(n * qd)?; // (n, Hq*D)
                be.attention_decode_capped(&mut att, q, &kw, &vw, win - 1, cfg.attn_shape(), cap)?;
                Ok((att, None))
            }
            Some(win) => Err(invalid(format!(
                "{n} new tokens after {past} cached pass layer {l}'s sliding_window of {win}: \
                 run them one at a time"
            ))),
        }
    }
}
