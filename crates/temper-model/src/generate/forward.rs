//! The inference forward with a KV cache: new tokens only, keys and values of earlier
//! positions read from the cache. Each layer runs the training forward
//! ([`crate::layer::DecoderLayer::forward`]: the same ops, LoRA unmerged through the same
//! `linear_forward`) with its attention in [`Attention::Cached`] mode, keeping nothing for a
//! backward.
//!
//!   x = embed(ids)                              // (n, C), positions past..past+n
//!   per layer: x = layer(x), cache[past..past+n] = the layer's k, v
//!   logits = head(rmsnorm(x[n-1]))              // (V), the last new token only

use temper_core::{Backend, CoreError, Gemm};

use crate::batch::StepCtx;
use crate::error::{ModelError, Result};
use crate::generate::KvCache;
use crate::layer::{Attention, Keep};
use crate::lora::LoraParams;
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

        let ctx = StepCtx::eval();
        let mut x = self.embed_ids(ids)?; // (n, C)
        for l in 0..self.cfg.layers {
            let mut out = be.act_uninit(n * c)?; // (n, C)
            let attention = Attention::Cached {
                k: &mut cache.k[l],
                v: &mut cache.v[l],
                past,
            };
            self.layer(l, &positions).forward(
                &x,
                Some(&mut out),
                attention,
                Keep::Nothing,
                lora,
                &ctx,
            )?;
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
}
