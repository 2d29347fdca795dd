//! Flash attention on tensor cores (kernels/flash_attention.cu; twin: src/cpu/attention.rs):
//! causal, varlen, GQA, forward and backward in three launches per call whatever the number
//! of sequences, with no score matrix in memory (the layer's attention memory is O(tokens)).
//! It serves 16-bit activations at the head dims the kernels are instantiated for, where the
//! GPU has the shared memory their tiles need; everything else keeps attention.rs's paths.
//!
//! On by default from sm_80 (Ampere), where its twins and timings were measured (an H200:
//! docs/gpu-notes.md); on sm_75 (T4: synchronous tile copies and m16n8k8 products, not yet
//! run on such a GPU) only with `TEMPER_ATTENTION=flash`. `TEMPER_ATTENTION=classic` keeps
//! the GEMM / direct paths everywhere; [`CudaBackend::set_flash_attention`] sets it per
//! backend. On sm_90 (H100, H200) the head dims of kernels/flash_hopper.cu run on warpgroup
//! products (wgmma) instead of mma.sync (at 16k tokens the forward 1.6x and the backward 2x
//! as fast: docs/gpu-notes.md); `TEMPER_ATTENTION=flash-mma` keeps the mma.sync kernels there.

use std::sync::Arc;

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, LaunchConfig};

use super::{dev_err, CudaBackend, CudaBuf};
use crate::{AttnShape, CoreError, DType, Result};

/// Keys per dK/dV block (FA_BK); query blocks: FlashDim::fwd_br and FlashDim::dq_br.
const BK: usize = 64;
/// Threads per block (FA_THREADS) and padding per shared row in elements (FA_PAD) of the
/// mma.sync kernels; the wgmma kernels' tiles have none.
const THREADS: u32 = 128;
const PAD: usize = 8;

/// A head dim with flash kernels and the tile sizes its entry points are instantiated with,
/// read from the kernel source's FLASH_DIMS lines (the one place they are written).
#[derive(Clone, Copy, Debug, PartialEq)]
struct FlashDim {
    d: usize,
    /// Keys per shared tile of the forward.
    fwd_bc: usize,
    /// Blocks of 16 queries per warp in the forward (the block's queries: 4 warps x 16 x this).
    fwd_fm: usize,
    /// Queries per shared tile of the dK/dV kernel, and the dK/dV columns one block sums.
    dkv_bq: usize,
    dkv_dc: usize,
    /// Keys per shared tile of the dQ kernel.
    dq_bc: usize,
    /// Blocks of 16 queries per warp in the dQ kernel.
    dq_fm: usize,
    /// Elements of padding per shared row.
    pad: usize,
    /// Entry-point infix: "" for mma.sync, "wg_" for the wgmma kernels.
    infix: &'static str,
}

/// The head dims the built-in flash kernels serve (for planners that must know whether a
/// model's attention keeps scores in memory).
pub fn flash_head_dims() -> Vec<usize> {
    builtin_dims()
        .map(|dims| dims.iter().map(|d| d.d).collect())
        .unwrap_or_default()
}

/// The tiles of the built-in kernel source (the FLASH_DIMS lines are in the file itself).
fn builtin_dims() -> Result<Vec<FlashDim>> {
    dims_in_source(include_str!("../../kernels/flash_attention.cu"))
}

/// The numbers of every instantiation line `PREFIX(sfx, T, n1, n2, ...)` of a kernel source,
/// each line holding `names.len()` of them (named in the error for a wrong count).
fn tile_lines(source: &str, file: &str, prefix: &str, names: &[&str]) -> Result<Vec<Vec<usize>>> {
    let mut lines = vec![];
    for line in source.lines() {
        let Some(rest) = line.trim_start().strip_prefix(&format!("{prefix}(sfx, T,")) else {
            continue;
        };
        let numbers: Vec<usize> = rest
            .split(')')
            .next()
            .unwrap_or("")
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| {
                CoreError::Device(format!(
                    "{file}: tile line {:?} does not parse: {e}",
                    line.trim()
                ))
            })?;
        if numbers.len() != names.len() {
            return Err(CoreError::Device(format!(
                "{file}: tile line {:?} needs {} numbers ({})",
                line.trim(),
                names.len(),
                names.join(", ")
            )));
        }
        lines.push(numbers);
    }
    if lines.is_empty() {
        return Err(CoreError::Device(format!(
            "{file} instantiates no head dim (no {prefix}(sfx, T, ...) line)"
        )));
    }
    Ok(lines)
}

/// The instantiations in a flash kernel source: each `FLASH(sfx, T, D, FWD_BC, FWD_FM, DKV_BQ,
/// DKV_DC, DQ_BC, DQ_FM)` line of its FLASH_DIMS macro.
fn dims_in_source(source: &str) -> Result<Vec<FlashDim>> {
    mma_dims_in_source(source, "FLASH", "")
}

/// The soft-capped instantiations in a flash kernel source: each `FLASH_CAP(sfx, T, ...)` line
/// of its FLASH_CAP_DIMS macro, with the numbers of a FLASH line (entry points `flash_*_cap_*`).
fn capped_dims_in_source(source: &str) -> Result<Vec<FlashDim>> {
    mma_dims_in_source(source, "FLASH_CAP", "cap_")
}

/// The `PREFIX(sfx, T, D, FWD_BC, FWD_FM, DKV_BQ, DKV_DC, DQ_BC, DQ_FM)` lines of the mma.sync
/// kernel source, as head dims whose entry points carry `infix`.
fn mma_dims_in_source(source: &str, prefix: &str, infix: &'static str) -> Result<Vec<FlashDim>> {
    let names = [
        "D", "FWD_BC", "FWD_FM", "DKV_BQ", "DKV_DC", "DQ_BC", "DQ_FM",
    ];
    let lines = tile_lines(source, "flash_attention.cu", prefix, &names)?;
    Ok(lines
        .into_iter()
        .map(|n| FlashDim {
            d: n[0],
            fwd_bc: n[1],
            fwd_fm: n[2],
            dkv_bq: n[3],
            dkv_dc: n[4],
            dq_bc: n[5],
            dq_fm: n[6],
            pad: PAD,
            infix,
        })
        .collect())
}

/// The instantiations in the wgmma kernel source: each `FLASH_WG(sfx, T, D, FWD_BC, DKV_BQ,
/// DQ_BC)` line (64 rows per block, one warpgroup, no row padding, no column chunks).
fn hopper_dims_in_source(source: &str) -> Result<Vec<FlashDim>> {
    let names = ["D", "FWD_BC", "DKV_BQ", "DQ_BC"];
    let lines = tile_lines(source, "flash_hopper.cu", "FLASH_WG", &names)?;
    Ok(lines
        .into_iter()
        .map(|n| FlashDim {
            d: n[0],
            fwd_bc: n[1],
            fwd_fm: 1,
            dkv_bq: n[2],
            dkv_dc: n[0],
            dq_bc: n[3],
            dq_fm: 1,
            pad: 0,
            infix: "wg_",
        })
        .collect())
}

impl FlashDim {
    fn row_bytes(&self) -> usize {
        (self.d + self.pad) * 2
    }
    /// Dynamic shared memory of each kernel with `stages` tiles in flight (FA_STAGES: 2 from
    /// sm_80, where copies are asynchronous, else 1).
    /// Queries per forward block.
    fn fwd_br(&self) -> usize {
        4 * 16 * self.fwd_fm
    }
    fn fwd_smem(&self, stages: usize) -> usize {
        (self.fwd_br() + 2 * stages * self.fwd_bc) * self.row_bytes()
    }
    fn dkv_smem(&self, stages: usize) -> usize {
        (2 * BK + 2 * stages * self.dkv_bq) * self.row_bytes() + 2 * stages * self.dkv_bq * 4
    }
    /// Queries per dQ block.
    fn dq_br(&self) -> usize {
        4 * 16 * self.dq_fm
    }
    fn dq_smem(&self, stages: usize) -> usize {
        (2 * self.dq_br() + 2 * stages * self.dq_bc) * self.row_bytes()
    }
}

/// The three kernels of one (storage type, head dim).
struct Entry {
    dtype: DType,
    dim: FlashDim,
    fwd: CudaFunction,
    dkv: CudaFunction,
    dq: CudaFunction,
}

/// The flash kernels usable on this GPU.
pub(super) struct FlashKernels {
    entries: Vec<Entry>,
    /// The soft-capped kernels (one more argument, the cap), for the head dims that have them.
    capped: Vec<Entry>,
    stages: usize,
    enabled: bool,
    /// The wgmma kernels where they load (sm_90), unless `TEMPER_ATTENTION=flash-mma`.
    wgmma: bool,
}

impl FlashKernels {
    /// Loads every entry point of the module whose shared memory fits the device (bf16 from
    /// sm_80, f16 from sm_75), raising each kernel's dynamic shared-memory limit to its need.
    pub(super) fn load(
        ctx: &Arc<CudaContext>,
        module: &Arc<CudaModule>,
        source: &str,
        major: i32,
    ) -> Result<Self> {
        let stages = if major >= 8 { 2 } else { 1 };
        let mode = std::env::var("TEMPER_ATTENTION").unwrap_or_default();
        let enabled = match mode.as_str() {
            "flash" | "flash-mma" => true,
            "classic" => false,
            _ => major >= 8,
        };
        let mut kernels = FlashKernels {
            entries: vec![],
            capped: vec![],
            stages,
            enabled,
            wgmma: mode != "flash-mma",
        };
        let file = "flash_attention.cu";
        let entries = kernels.load_entries(ctx, module, &dims_in_source(source)?, major, file)?;
        kernels.replace(entries);
        kernels.capped =
            kernels.load_entries(ctx, module, &capped_dims_in_source(source)?, major, file)?;
        Ok(kernels)
    }

    /// Puts the wgmma kernels of flash_hopper.cu (compiled for sm_90a) in place of the mma.sync
    /// ones of the same storage type and head dim.
    pub(super) fn add_hopper(
        &mut self,
        ctx: &Arc<CudaContext>,
        module: &Arc<CudaModule>,
        source: &str,
    ) -> Result<()> {
        let dims = hopper_dims_in_source(source)?;
        let entries = self.load_entries(ctx, module, &dims, 9, "flash_hopper.cu")?;
        self.replace(entries);
        Ok(())
    }

    /// Puts `entries` in place of the uncapped ones of the same storage type and head dim.
    fn replace(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            self.entries
                .retain(|e| !(e.dtype == entry.dtype && e.dim.d == entry.dim.d));
            self.entries.push(entry);
        }
    }

    /// Whether the wgmma kernels may serve (not `TEMPER_ATTENTION=flash-mma`).
    pub(super) fn wants_wgmma(&self) -> bool {
        self.wgmma
    }

    /// The entry points of `dims` in `module` whose shared memory fits the device, each with
    /// its dynamic shared-memory limit raised to its need.
    fn load_entries(
        &self,
        ctx: &Arc<CudaContext>,
        module: &Arc<CudaModule>,
        dims: &[FlashDim],
        major: i32,
        file: &str,
    ) -> Result<Vec<Entry>> {
        let mut entries = vec![];
        let max_smem = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(dev_err("shared memory per block"))? as usize;
        for dtype in [DType::BF16, DType::F16] {
            if dtype == DType::BF16 && major < 8 {
                continue;
            }
            for &dim in dims {
                let needs = [
                    dim.fwd_smem(self.stages),
                    dim.dkv_smem(self.stages),
                    dim.dq_smem(self.stages),
                ];
                if needs.iter().any(|&n| n > max_smem) {
                    continue;
                }
                let mut funcs = vec![];
                for (kind, smem) in ["fwd", "bwd_dkv", "bwd_dq"].iter().zip(needs) {
                    let name = format!("flash_{kind}_{}{}_d{}", dim.infix, dtype.suffix(), dim.d);
                    let f = module.load_function(&name).map_err(|e| {
                        CoreError::Device(format!("kernel {name} in {file}: {e:?}"))
                    })?;
                    f.set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        smem as i32,
                    )
                    .map_err(dev_err("flash attention shared memory limit"))?;
                    funcs.push(f);
                }
                let dq = funcs.pop();
                let dkv = funcs.pop();
                let fwd = funcs.pop();
                if let (Some(fwd), Some(dkv), Some(dq)) = (fwd, dkv, dq) {
                    entries.push(Entry {
                        dtype,
                        dim,
                        fwd,
                        dkv,
                        dq,
                    });
                }
            }
        }
        Ok(entries)
    }

    /// The kernels for `dtype` and head dim `d`, soft-capped ones when `capped`.
    fn entry(&self, dtype: DType, d: usize, capped: bool) -> Option<&Entry> {
        if !self.enabled {
            return None;
        }
        let list = if capped { &self.capped } else { &self.entries };
        list.iter().find(|e| e.dtype == dtype && e.dim.d == d)
    }
}

/// One block per tile of `tile` rows of every sequence: (first token, length, first row of
/// the tile), heaviest first by `work(length, first row)`.
fn tiles(cu: &[u32], tile: usize, work: impl Fn(usize, usize) -> usize) -> Vec<u32> {
    let mut list: Vec<(usize, [u32; 3])> = vec![];
    for w in cu.windows(2) {
        let (a, len) = (w[0], (w[1] - w[0]) as usize);
        for r in (0..len).step_by(tile) {
            list.push((work(len, r), [a, len as u32, r as u32]));
        }
    }
    list.sort_by_key(|(work, _)| std::cmp::Reverse(*work));
    list.into_iter().flat_map(|(_, t)| t).collect()
}

/// The keys a tile of `rows` queries from row r of a sequence of `len` tokens attends to, at
/// most: those up to its last row, from its first row's window on (the tiles' order of work).
fn keys_seen(len: usize, r: usize, rows: usize, window: Option<usize>) -> usize {
    len.min(r + rows) - (r + 1).saturating_sub(window.unwrap_or(usize::MAX))
}

/// The sliding window as the kernels take it: tokens, 0 for none (a window past u32 is none).
fn kernel_window(window: Option<usize>) -> u32 {
    window.map_or(0, |w| u32::try_from(w).unwrap_or(0))
}

fn grid(tiles: &[u32], y: usize, z: usize, smem: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((tiles.len() / 3) as u32, y as u32, z as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: smem as u32,
    }
}

/// [`launch!`] for a flash kernel: the soft-capped entry points take the cap as one more
/// argument after the others.
macro_rules! launch_flash {
    ($self:ident, $f:expr, $cfg:expr, $op:expr, $cap:expr, $($arg:expr),* $(,)?) => {{
        use cudarc::driver::PushKernelArg as _;
        let cap: Option<f32> = $cap;
        let cap_arg = cap.unwrap_or(0.0);
        let mut builder = $self.stream.launch_builder($f);
        $( builder.arg($arg); )*
        if cap.is_some() {
            builder.arg(&cap_arg);
        }
        // SAFETY: the arguments match the entry point's signature in flash_attention.cu or
        // flash_hopper.cu (the capped ones end with the cap), and the buffer sizes were
        // checked by the caller.
        unsafe { builder.launch($cfg) }
            .map(|_| ())
            .map_err(|e| CoreError::Device(format!("{}: {e:?}", $op)))
    }};
}

impl CudaBackend {
    /// Whether flash attention serves activations of `dtype` with head dim `d` here.
    pub fn flash_applies(&self, dtype: DType, d: usize) -> bool {
        self.flash.entry(dtype, d, false).is_some()
    }

    /// Whether soft-capped flash attention serves activations of `dtype` with head dim `d`.
    pub fn flash_applies_capped(&self, dtype: DType, d: usize) -> bool {
        self.flash.entry(dtype, d, true).is_some()
    }

    /// The head dims with soft-capped flash kernels for `dtype` on this GPU (for errors).
    pub(super) fn flash_capped_dims(&self, dtype: DType) -> Vec<usize> {
        let list = self.flash.capped.iter().filter(|e| e.dtype == dtype);
        list.map(|e| e.dim.d).collect()
    }

    /// Turns flash attention on or off for this backend (off: attention.rs's GEMM and direct
    /// paths). The default: see the module's documentation.
    pub fn set_flash_attention(&mut self, on: bool) {
        self.flash.enabled = on;
    }

    /// Forward over every sequence of `cu`; the caller checked the shapes and that
    /// [`Self::flash_applies`]; q, k, v are in out's type.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flash_forward(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        cu: &[u32],
        shape: AttnShape,
        window: Option<usize>,
        softcap: Option<f32>,
    ) -> Result<()> {
        let AttnShape {
            q_heads: hq,
            kv_heads: hkv,
            head_dim: d,
        } = shape;
        let e = self.flash_entry(out.dtype, d, softcap.is_some())?;
        let br = e.dim.fwd_br();
        let list = tiles(cu, br, |len, r| keys_seen(len, r, br, window));
        if list.is_empty() {
            return Ok(());
        }
        let tiles_d = self.upload_u32(&list)?;
        let (hq32, hkv32, scale) = (hq as u32, hkv as u32, 1.0 / (d as f32).sqrt());
        let win = kernel_window(window);
        let cfg = grid(&list, hq, 1, e.dim.fwd_smem(self.flash.stages));
        launch_flash!(
            self,
            &e.fwd,
            cfg,
            "flash attention forward",
            softcap,
            &mut out.data,
            &mut lse.data,
            &q.data,
            &k.data,
            &v.data,
            &*tiles_d,
            &hq32,
            &hkv32,
            &scale,
            &win
        )
    }

    /// Backward over every sequence of `cu`, given `dsum` (N, hq) = rowsum(dout * out); the
    /// caller checked the shapes and that [`Self::flash_applies`]; all inputs are in dq's type.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn flash_backward(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dout: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        lse: &CudaBuf,
        dsum: &CudaBuf,
        cu: &[u32],
        shape: AttnShape,
        window: Option<usize>,
        softcap: Option<f32>,
    ) -> Result<()> {
        let AttnShape {
            q_heads: hq,
            kv_heads: hkv,
            head_dim: d,
        } = shape;
        let e = self.flash_entry(dq.dtype, d, softcap.is_some())?;
        let (hq32, hkv32, scale) = (hq as u32, hkv as u32, 1.0 / (d as f32).sqrt());
        let win = kernel_window(window);
        let w = window.unwrap_or(usize::MAX);
        let key_tiles = tiles(cu, BK, |len, r| (len - r).min(w.saturating_add(BK)));
        if key_tiles.is_empty() {
            return Ok(());
        }
        let key_tiles_d = self.upload_u32(&key_tiles)?;
        let chunks = d.div_ceil(e.dim.dkv_dc);
        let cfg = grid(&key_tiles, hkv, chunks, e.dim.dkv_smem(self.flash.stages));
        launch_flash!(
            self,
            &e.dkv,
            cfg,
            "flash attention backward (dk, dv)",
            softcap,
            &mut dk.data,
            &mut dv.data,
            &q.data,
            &k.data,
            &v.data,
            &dout.data,
            &lse.data,
            &dsum.data,
            &*key_tiles_d,
            &hq32,
            &hkv32,
            &scale,
            &win
        )?;
        let br = e.dim.dq_br();
        let query_tiles = tiles(cu, br, |len, r| keys_seen(len, r, br, window));
        let query_tiles_d = self.upload_u32(&query_tiles)?;
        let cfg = grid(&query_tiles, hq, 1, e.dim.dq_smem(self.flash.stages));
        launch_flash!(
            self,
            &e.dq,
            cfg,
            "flash attention backward (dq)",
            softcap,
            &mut dq.data,
            &q.data,
            &k.data,
            &v.data,
            &dout.data,
            &lse.data,
            &dsum.data,
            &*query_tiles_d,
            &hq32,
            &hkv32,
            &scale,
            &win
        )
    }

    fn flash_entry(&self, dtype: DType, d: usize, capped: bool) -> Result<&Entry> {
        self.flash.entry(dtype, d, capped).ok_or_else(|| {
            let kind = if capped { "soft-capped " } else { "" };
            CoreError::Device(format!(
                "no {kind}flash attention kernel for {dtype} with head dim {d} on this GPU"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_every_row_once_heaviest_first() {
        let cu = [0u32, 1, 131, 131, 200];
        let list = tiles(&cu, 64, |len, r| len.min(r + 64));
        let blocks: Vec<[u32; 3]> = list.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
        // Sequence 1..131 (130 rows) gives tiles at 0, 64, 128; 131..200 (69) at 0, 64; the
        // empty sequence none; the first sequence (1 row) one.
        assert_eq!(blocks.len(), 6);
        let mut covered = vec![0; 200];
        for [a, len, r] in &blocks {
            for row in *r..(*r + 64).min(*len) {
                covered[(a + row) as usize] += 1;
            }
        }
        assert!(covered.iter().all(|&c| c == 1), "{covered:?}");
        let work: Vec<u32> = blocks
            .iter()
            .map(|[_, len, r]| (*len).min(r + 64))
            .collect();
        assert!(work.windows(2).all(|w| w[0] >= w[1]), "{work:?}");
    }

    #[test]
    fn a_tile_line_with_the_wrong_count_names_the_file_and_the_numbers() {
        let err = tile_lines(
            "FLASH_WG(sfx, T, 128, 64)",
            "x.cu",
            "FLASH_WG",
            &["D", "BC", "BQ"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("x.cu") && err.contains("needs 3 numbers (D, BC, BQ)"),
            "{err}"
        );
        let none = tile_lines("// no lines", "x.cu", "FLASH_WG", &["D"]).unwrap_err();
        assert!(
            none.to_string().contains("no FLASH_WG(sfx, T, ...) line"),
            "{none}"
        );
    }

    #[test]
    fn wgmma_tiles_fit_two_blocks_per_hopper_sm() {
        let dims = hopper_dims_in_source(include_str!("../../kernels/flash_hopper.cu")).unwrap();
        let ds: Vec<usize> = dims.iter().map(|d| d.d).collect();
        assert_eq!(ds, [64, 128]);
        // sm_90 has 227 KiB of shared memory per block and 228 per SM: two blocks each.
        for dim in dims {
            assert_eq!(
                (dim.fwd_br(), dim.dq_br(), dim.dkv_dc, dim.pad),
                (64, 64, dim.d, 0)
            );
            for need in [dim.fwd_smem(2), dim.dkv_smem(2), dim.dq_smem(2)] {
                assert!(2 * need <= 228 * 1024, "{dim:?} needs {need} bytes");
            }
        }
    }

    #[test]
    fn shared_memory_of_the_largest_tiles_fits_hopper_and_ampere() {
        // sm_90 allows 227 KiB per block, sm_80 163 KiB: every head dim fits both.
        let dims = builtin_dims().unwrap();
        let ds: Vec<usize> = dims.iter().map(|d| d.d).collect();
        assert_eq!(ds, [64, 80, 96, 128, 256]);
        // The soft-capped entry points: Gemma 2's head dims (and the tiny test shapes').
        let source = include_str!("../../kernels/flash_attention.cu");
        let capped = capped_dims_in_source(source).unwrap();
        let ds: Vec<usize> = capped.iter().map(|d| d.d).collect();
        assert_eq!(ds, [64, 128, 256]);
        assert!(capped.iter().all(|d| d.infix == "cap_"));
        for dim in dims.into_iter().chain(capped) {
            for need in [dim.fwd_smem(2), dim.dkv_smem(2), dim.dq_smem(2)] {
                assert!(need <= 163 * 1024, "{dim:?} needs {need} bytes");
            }
            assert_eq!(dim.d % 16, 0);
            assert_eq!(dim.d % dim.dkv_dc.min(dim.d), 0);
        }
    }
}
