//! The layer's gated MLP over a block of rows of the token axis:
//!   xn2 = rmsnorm(x2, w2);  g, u = xn2 Wg^T, xn2 Wu^T;  h = act(g) * u;  m = h Wd^T
//!   (Gemma 2/3) m = rmsnorm(m, wm);  out = x2 + m
//! and its backward.
//!
//! Every line is per token, so the MLP can run over the whole sequence at once or in tiles of
//! rows. The tiles are what keep long sequences small: the F-wide values (g, u, h and their
//! gradients, four times the hidden width for Llama) are the largest activations of a layer.
//! When the layer is recomputed for its backward anyway (gradient checkpointing), a sequence
//! longer than [`MLP_TILE_TOKENS`] runs its MLP tile by tile in the forward, keeps nothing of
//! it, and its backward rebuilds and walks back one tile at a time (`backward_tiled`).

use temper_core::{Backend, DType};

use crate::batch::StepCtx;
use crate::config::MlpAct;
use crate::error::Result;
use crate::layer::columns::{join_columns, split_columns};
use crate::layer::DecoderLayer;
use crate::linear::{linear_forward_opt, LoraSaved};
use crate::lora::{LoraParams, Target};

/// Tokens per MLP tile: sequences longer than this run their MLP in tiles when the layer is
/// recomputed for its backward. GEMMs of 4096 rows still run at full speed.
pub const MLP_TILE_TOKENS: usize = 4096;

/// A block of rows of the token axis: `len` tokens from `start`, the `tile`-th block (which
/// seeds the block's dropout masks; tile 0 draws the masks of the whole-sequence MLP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub start: usize,
    pub len: usize,
    pub tile: usize,
}

impl Rows {
    /// The whole sequence of n tokens as one block.
    pub fn all(n: usize) -> Rows {
        Rows {
            start: 0,
            len: n,
            tile: 0,
        }
    }
}

/// The rows of a tile (the last may have fewer) when n tokens run their MLP in tiles of at
/// most `tile_tokens`; None when they run it whole (n <= tile_tokens).
pub fn tile_rows(n: usize, tile_tokens: usize) -> Option<usize> {
    (n > tile_tokens).then(|| n.div_ceil(n.div_ceil(tile_tokens.max(1))))
}

/// n tokens cut into tiles of at most `tile_tokens`, of equal length but the last.
pub fn tiles(n: usize, tile_tokens: usize) -> Vec<Rows> {
    let len = tile_rows(n, tile_tokens).unwrap_or(n).max(1);
    (0..n.div_ceil(len).max(1))
        .map(|tile| Rows {
            start: tile * len,
            len: len.min(n - (tile * len).min(n)),
            tile,
        })
        .filter(|r| r.len > 0)
        .collect()
}

/// What the MLP's backward reads, for the R rows of one block.
pub struct MlpActs<B: Backend> {
    pub xn2: B::Buf,   // (R, C)
    pub rstd2: B::Buf, // (R)
    pub g: B::Buf,     // (R, F)
    pub u: B::Buf,     // (R, F)
    pub h: B::Buf,     // (R, F)
    /// Gemma 2/3: the down projection before its norm (R, C), and the norm's rstd (R).
    pub mlp_out: Option<(B::Buf, B::Buf)>,
    /// Per target (indexed by [`Target::index`]); only the MLP's are filled.
    pub lora: Vec<Option<LoraSaved<B>>>,
}

impl<B: Backend> DecoderLayer<'_, B> {
    /// Whether this layer runs its MLP in tiles (see the module comment).
    pub fn mlp_tiled(&self) -> bool {
        tile_rows(self.tokens(), self.mlp_tile_tokens).is_some()
    }

    /// The MLP over the rows `rows` of the layer: from x2 (R, C) writes out = x2 + m (R, C)
    /// when `out` is given, and returns what the backward reads. Without `out` the down
    /// projection computes only what its LoRA backward keeps (Gemma 2/3 still run it: the
    /// norm's input and rstd are read).
    pub(super) fn mlp_forward(
        &self,
        x2: &B::Buf,
        out: Option<&mut B::Buf>,
        rows: Rows,
        lora: Option<&LoraParams<B>>,
        ctx: &StepCtx,
    ) -> Result<MlpActs<B>> {
        let (be, cfg, w) = (self.be, self.cfg, self.weights);
        let (n, c, f) = (rows.len, cfg.hidden, cfg.intermediate);
        let mut saved: Vec<Option<LoraSaved<B>>> = (0..Target::COUNT).map(|_| None).collect();
        let mut lin = |t: Target, y: Option<&mut B::Buf>, input: &B::Buf| -> Result<()> {
            let adapter = self.lora_ref(lora, t, ctx, rows.tile);
            saved[t.index()] = linear_forward_opt(be, y, input, w.linear(t)?, n, adapter)?;
            Ok(())
        };

        let mut xn2 = be.act_uninit(n * c)?; // (R, C)
        let mut rstd2 = be.uninit_as(n, DType::F32)?; // (R)
        be.rmsnorm_forward(&mut xn2, &mut rstd2, x2, &w.mlp_norm, c, cfg.rms_eps)?;
        let mut g = be.act_uninit(n * f)?; // (R, F)
        let mut u = be.act_uninit(n * f)?; // (R, F)
        if cfg.fused_proj {
            let mut gu = be.act_uninit(n * 2 * f)?; // (R, 2F): gate, then up
            lin(Target::GateUp, Some(&mut gu), &xn2)?;
            split_columns(be, &gu, &mut [(&mut g, f), (&mut u, f)], n)?;
        } else {
            lin(Target::Gate, Some(&mut g), &xn2)?;
            lin(Target::Up, Some(&mut u), &xn2)?;
        }
        let mut h = be.act_uninit(n * f)?; // (R, F)
        match cfg.mlp_act {
            MlpAct::Silu => be.swiglu_forward(&mut h, &g, &u)?,
            MlpAct::GeluTanh => be.geglu_forward(&mut h, &g, &u)?,
        }
        let mlp_out = match &w.sandwich {
            // The norm's input and rstd are kept for backward, so the GEMM runs even when
            // nothing reads `out`.
            Some(norms) => {
                let mut m = be.act_uninit(n * c)?; // (R, C)
                lin(Target::Down, Some(&mut m), &h)?;
                let mut rstd = be.uninit_as(n, DType::F32)?; // (R)
                match out {
                    Some(out) => {
                        be.rmsnorm_forward(out, &mut rstd, &m, &norms.mlp_out, c, cfg.rms_eps)?;
                        be.axpy(out, 1.0, x2)?;
                    }
                    None => {
                        let mut normed = be.act_uninit(n * c)?; // (R, C)
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
                        be.axpy(out, 1.0, x2)?;
                    }
                    None => lin(Target::Down, None, &h)?,
                }
                None
            }
        };
        Ok(MlpActs {
            xn2,
            rstd2,
            g,
            u,
            h,
            mlp_out,
            lora: saved,
        })
    }

    /// The backward of [`DecoderLayer::mlp_forward`] over the same rows: from dout (R, C)
    /// returns dx2 (R, C) (through the MLP and the residual), adding the MLP's LoRA gradients
    /// into `lora`. Frees each activation after its last use.
    pub(super) fn mlp_backward(
        &self,
        acts: MlpActs<B>,
        x2: &B::Buf,
        dout: &B::Buf,
        rows: Rows,
        lora: &mut LoraParams<B>,
        ctx: &StepCtx,
    ) -> Result<B::Buf> {
        let (be, cfg, w) = (self.be, self.cfg, self.weights);
        let n = rows.len;
        let (c, f) = (cfg.hidden, cfg.intermediate);
        let MlpActs {
            xn2,
            rstd2,
            g,
            u,
            h,
            mlp_out,
            lora: mut saved,
        } = acts;
        let mut lin_bwd = |t: Target,
                           dxin: Option<&mut B::Buf>,
                           accumulate: bool,
                           dy: &B::Buf,
                           input: &B::Buf|
         -> Result<()> {
            self.linear_backward(t, &mut saved, lora, ctx, rows, dxin, accumulate, dy, input)
        };

        // out = x2 + m, m = down(h) (Gemma 2/3: m = rmsnorm(down(h)))
        let mut dh = be.act_uninit(n * f)?; // (R, F)
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
        let mut dg = be.act_uninit(n * f)?; // (R, F)
        let mut du = be.act_uninit(n * f)?; // (R, F)
        match cfg.mlp_act {
            MlpAct::Silu => be.swiglu_backward(&mut dg, &mut du, &dh, &g, &u)?,
            MlpAct::GeluTanh => be.geglu_backward(&mut dg, &mut du, &dh, &g, &u)?,
        }
        drop((dh, g, u));
        // g, u = gate(xn2), up(xn2)
        let mut dxn2 = be.act_uninit(n * c)?; // (R, C)
        if cfg.fused_proj {
            let dgu = join_columns(be, &[(&dg, f), (&du, f)], n)?;
            drop((dg, du));
            lin_bwd(Target::GateUp, Some(&mut dxn2), false, &dgu, &xn2)?;
        } else {
            lin_bwd(Target::Gate, Some(&mut dxn2), false, &dg, &xn2)?;
            drop(dg);
            lin_bwd(Target::Up, Some(&mut dxn2), true, &du, &xn2)?;
        }
        drop(xn2);
        // xn2 = rmsnorm(x2); x2 also flows straight to out
        let mut dx2 = be.act_uninit(n * c)?; // (R, C)
        be.rmsnorm_backward(&mut dx2, &dxn2, x2, &w.mlp_norm, &rstd2, c)?;
        be.axpy(&mut dx2, 1.0, dout)?;
        Ok(dx2)
    }

    /// The MLP tile by tile over the layer's N tokens, writing out (N, C) and keeping
    /// nothing. Without `out` (a recompute) there is nothing to do: the tiled backward
    /// rebuilds each tile itself.
    pub(super) fn mlp_forward_tiled(
        &self,
        x2: &B::Buf,
        out: Option<&mut B::Buf>,
        lora: Option<&LoraParams<B>>,
        ctx: &StepCtx,
    ) -> Result<()> {
        let Some(out) = out else {
            return Ok(());
        };
        let (be, c) = (self.be, self.cfg.hidden);
        for rows in tiles(self.tokens(), self.mlp_tile_tokens) {
            let x2_rows = self.copy_rows(x2, rows)?; // (R, C)
            let mut out_rows = be.act_uninit(rows.len * c)?; // (R, C)
            self.mlp_forward(&x2_rows, Some(&mut out_rows), rows, lora, ctx)?;
            be.copy_range(out, rows.start * c, &out_rows, 0, rows.len * c)?;
        }
        Ok(())
    }

    /// The backward of [`DecoderLayer::mlp_forward_tiled`]: for each tile, the MLP's forward
    /// again (the same dropout masks) and at once its backward. Returns dx2 (N, C).
    pub(super) fn mlp_backward_tiled(
        &self,
        x2: &B::Buf,
        dout: &B::Buf,
        lora: &mut LoraParams<B>,
        ctx: &StepCtx,
    ) -> Result<B::Buf> {
        let (be, c) = (self.be, self.cfg.hidden);
        let mut dx2 = be.act_uninit(self.tokens() * c)?; // (N, C)
        for rows in tiles(self.tokens(), self.mlp_tile_tokens) {
            let x2_rows = self.copy_rows(x2, rows)?; // (R, C)
            let dout_rows = self.copy_rows(dout, rows)?; // (R, C)
            let acts = self.mlp_forward(&x2_rows, None, rows, Some(&*lora), ctx)?;
            let dx2_rows = self.mlp_backward(acts, &x2_rows, &dout_rows, rows, lora, ctx)?;
            be.copy_range(&mut dx2, rows.start * c, &dx2_rows, 0, rows.len * c)?;
        }
        Ok(dx2)
    }

    /// Rows `rows` of x (N, C) as a buffer of their own (R, C).
    fn copy_rows(&self, x: &B::Buf, rows: Rows) -> Result<B::Buf> {
        let c = self.cfg.hidden;
        let mut y = self.be.act_uninit(rows.len * c)?;
        self.be
            .copy_range(&mut y, 0, x, rows.start * c, rows.len * c)?;
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_tokens_once_in_near_equal_blocks() {
        for n in [1, 7, 4096, 4097, 8192, 16384, 16385, 65536] {
            let t = tiles(n, 4096);
            assert_eq!(t.iter().map(|r| r.len).sum::<usize>(), n, "n {n}");
            assert!(t.iter().all(|r| r.len <= 4096 && r.len > 0), "n {n}");
            for (i, pair) in t.windows(2).enumerate() {
                assert_eq!(pair[0].start + pair[0].len, pair[1].start, "n {n}");
                assert_eq!(pair[0].tile, i);
            }
            assert_eq!(t.len(), n.div_ceil(4096));
        }
        assert_eq!(
            tiles(16384, 4096)[3],
            Rows {
                start: 12288,
                len: 4096,
                tile: 3
            }
        );
        assert_eq!(tiles(5, 4096), vec![Rows::all(5)]);
    }
}
