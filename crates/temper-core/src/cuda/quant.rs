//! 4-bit frozen weights on the GPU: quantised there (`kernels/quant.cu`) or uploaded as
//! codes and block scales, dequantised into a buffer of the compute dtype right before each
//! GEMM (`kernels/dequant.cu`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, SyncOnDrop};
use temper_quant::{Absmax4, Quant4, Quantize4Spec};

use super::{dev_err, grid_stride, launch, CudaBackend, CudaBuf};
use crate::error::check_len;
use crate::memory::Accounting;
use crate::{CoreError, DType, Result};

// Entry points: dequant4 (kernels/dequant.cu), quantize_4bit and quantize_blockwise (f32
// only) (kernels/quant.cu).
pub(super) const DEQUANT4: &str = "dequant4";
/// The same values in a layout for memory speed, chosen with `TEMPER_DEQUANT=units`.
pub(super) const DEQUANT4_UNITS: &str = "dequant4_units";
pub(super) const QUANTIZE_4BIT: &str = "quantize_4bit";
pub(super) const QUANTIZE_BLOCKWISE: &str = "quantize_blockwise";

/// Block scales on the device.
enum Scales {
    Plain(CudaSlice<f32>),
    Nested {
        codes: CudaSlice<u8>,
        map: CudaSlice<f32>,
        nested: CudaSlice<f32>,
        nested_blocksize: u32,
        offset: f32,
    },
}

/// A [`Quant4`] in device memory, counted until dropped.
pub struct CudaQuant {
    packed: CudaSlice<u8>,
    code: CudaSlice<f32>,
    scales: Scales,
    blocksize: u32,
    numel: usize,
    bytes: usize,
    accounting: Arc<Accounting>,
}

impl CudaQuant {
    pub fn numel(&self) -> usize {
        self.numel
    }
}

impl Drop for CudaQuant {
    fn drop(&mut self) {
        self.accounting.sub(self.bytes);
    }
}

impl CudaBackend {
    /// The device address of `s` for a kernel that reads it; `guards` keeps the stream's
    /// ordering until after the launch.
    fn read_ptr<'a, T>(&'a self, s: &'a CudaSlice<T>, guards: &mut Vec<SyncOnDrop<'a>>) -> u64 {
        let (ptr, guard) = s.device_ptr(&self.stream);
        guards.push(guard);
        ptr
    }
}

/// One thread block per quantisation block (at most 65535 blocks, grid-stride beyond), half
/// a block's values in threads (each packs two codes), 32 to 256 of them.
fn per_block(blocks: usize, blocksize: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.clamp(1, 65535) as u32, 1, 1),
        block_dim: ((blocksize / 2).clamp(32, 256) as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// A copy of a 4-bit matrix in host memory, as [`Backend::upload_quant4`] takes it.
    ///
    /// [`Backend::upload_quant4`]: crate::Backend::upload_quant4
    pub fn download_quant4(&self, q: &CudaQuant) -> Result<Quant4> {
        let dl = dev_err("download a 4-bit weight");
        let blocks = q.numel.div_ceil(q.blocksize as usize);
        let mut bytes = self.stream.clone_dtoh(&q.packed).map_err(&dl)?;
        bytes.truncate(q.numel.div_ceil(2));
        let code_vec = self.stream.clone_dtoh(&q.code).map_err(&dl)?;
        let mut code = [0.0f32; 16];
        code.copy_from_slice(&code_vec[..16]);
        let absmax = match &q.scales {
            Scales::Plain(a) => {
                let mut a = self.stream.clone_dtoh(a).map_err(&dl)?;
                a.truncate(blocks);
                Absmax4::Plain(a)
            }
            Scales::Nested {
                codes,
                map,
                nested,
                nested_blocksize,
                offset,
            } => {
                let mut codes = self.stream.clone_dtoh(codes).map_err(&dl)?;
                codes.truncate(blocks);
                let map_vec = self.stream.clone_dtoh(map).map_err(&dl)?;
                let mut map = Box::new([0.0f32; 256]);
                map.copy_from_slice(&map_vec[..256]);
                let mut nested_absmax = self.stream.clone_dtoh(nested).map_err(&dl)?;
                nested_absmax.truncate(blocks.div_ceil(*nested_blocksize as usize));
                Absmax4::Nested {
                    codes,
                    map,
                    nested_absmax,
                    nested_blocksize: *nested_blocksize as usize,
                    offset: *offset,
                }
            }
        };
        Ok(Quant4 {
            code,
            blocksize: q.blocksize as usize,
            numel: q.numel,
            bytes,
            absmax,
        })
    }
}

pub(super) fn upload(be: &CudaBackend, q: &Quant4) -> Result<CudaQuant> {
    q.validate()?;
    let up = |e| dev_err("upload 4-bit weight")(e);
    let packed = be.stream.clone_htod(&q.bytes).map_err(up)?;
    let code = be.stream.clone_htod(&q.code[..]).map_err(up)?;
    let scales = match &q.absmax {
        Absmax4::Plain(a) => Scales::Plain(be.stream.clone_htod(a).map_err(up)?),
        Absmax4::Nested {
            codes,
            map,
            nested_absmax,
            nested_blocksize,
            offset,
        } => Scales::Nested {
            codes: be.stream.clone_htod(codes).map_err(up)?,
            map: be.stream.clone_htod(&map[..]).map_err(up)?,
            nested: be.stream.clone_htod(nested_absmax).map_err(up)?,
            nested_blocksize: *nested_blocksize as u32,
            offset: *offset,
        },
    };
    let bytes = q.device_bytes();
    be.accounting.add(bytes);
    Ok(CudaQuant {
        packed,
        code,
        scales,
        blocksize: q.blocksize as u32,
        numel: q.numel,
        bytes,
        accounting: be.accounting.clone(),
    })
}

impl CudaBackend {
    /// Dequantises 4-bit weights with `dequant4_units` when `units`, else `dequant4` (tests;
    /// runs take `TEMPER_DEQUANT`).
    pub fn set_dequant_units(&mut self, units: bool) {
        self.dequant_units = units;
    }
}

pub(super) fn dequantize(be: &CudaBackend, out: &mut CudaBuf, q: &CudaQuant) -> Result<()> {
    check_len("dequantize4", "out", out.len, q.numel)?;
    if q.numel == 0 {
        return Ok(());
    }
    let n = q.numel as u64;
    // dequant4: a thread per packed byte (up to the grid's cap); dequant4_units: a thread
    // per four units of 8 values (its DEQ_UNROLL).
    let (name, threads) = if be.dequant_units {
        (DEQUANT4_UNITS, q.numel.div_ceil(32))
    } else {
        (DEQUANT4, q.numel.div_ceil(2))
    };
    let f = be.kernel(name, out.dtype)?;
    let cfg = grid_stride(threads);
    // The kernel reads either the plain scales or the nested parts (null pointers for
    // the others); the guards order the reads after earlier writes on the stream.
    let mut guards = Vec::with_capacity(3);
    let (absmax, codes, map, nested, nested_blocksize, offset) = match &q.scales {
        Scales::Plain(a) => (be.read_ptr(a, &mut guards), 0, 0, 0, 1u32, 0.0f32),
        Scales::Nested {
            codes,
            map,
            nested,
            nested_blocksize,
            offset,
        } => (
            0,
            be.read_ptr(codes, &mut guards),
            be.read_ptr(map, &mut guards),
            be.read_ptr(nested, &mut guards),
            *nested_blocksize,
            *offset,
        ),
    };
    launch!(
        be,
        f,
        cfg,
        "dequantize4",
        &mut out.data,
        &q.packed,
        &q.code,
        &absmax,
        &codes,
        &map,
        &nested,
        &nested_blocksize,
        &offset,
        &q.blocksize,
        &n
    )
}

/// `values` quantised on the GPU (`quantize_4bit_*`, then `quantize_blockwise_f32` over
/// the block scales for double quantisation). Device memory beyond the result: the f32
/// block scales while they are double-quantised (1/16 of the values' bf16 bytes).
pub(super) fn quantize(
    be: &CudaBackend,
    values: &CudaBuf,
    spec: &Quantize4Spec,
    name: &str,
) -> Result<CudaQuant> {
    const OP: &str = "quantize4";
    spec.validate()?;
    let n = values.len;
    let bs = spec.blocksize;
    let blocks = n.div_ceil(bs);
    let alloc = dev_err("allocate a 4-bit weight");
    let code = be.stream.clone_htod(&spec.code[..]).map_err(&alloc)?;
    let packed = be
        .stream
        .alloc_zeros::<u8>(n.div_ceil(2).max(1))
        .map_err(&alloc)?;
    let absmax = be
        .stream
        .alloc_zeros::<f32>(blocks.max(1))
        .map_err(&alloc)?;
    // Counted from here: an error below drops `q`, which gives its bytes back.
    let bytes = n.div_ceil(2) + 16 * 4 + 4 * blocks;
    be.accounting.add(bytes);
    let mut q = CudaQuant {
        packed,
        code,
        scales: Scales::Plain(absmax),
        blocksize: bs as u32,
        numel: n,
        bytes,
        accounting: be.accounting.clone(),
    };
    let Scales::Plain(absmax) = &mut q.scales else {
        unreachable!("made plain above")
    };
    if n > 0 {
        let (n64, bs32) = (n as u64, bs as u32);
        launch!(
            be,
            be.kernel(QUANTIZE_4BIT, values.dtype)?,
            per_block(blocks, bs),
            OP,
            &values.data,
            &q.code,
            &mut *absmax,
            &mut q.packed,
            &n64,
            &bs32
        )?;
    }
    let host = be
        .stream
        .clone_dtoh(absmax)
        .map_err(dev_err("download block scales"))?;
    let host = &host[..blocks];
    if let Some(b) = host.iter().position(|a| !a.is_finite()) {
        return Err(CoreError::Invalid {
            op: OP,
            msg: format!(
                "{name}: block {b} (values {} to {}) holds a NaN or an infinity; 4-bit \
                 quantisation needs finite weights (check the checkpoint)",
                b * bs,
                ((b + 1) * bs).min(n) - 1
            ),
        });
    }
    let Some(nested) = &spec.nested else {
        return Ok(q);
    };
    // Double quantisation: the f32 block scales give way to 8-bit codes of
    // (scale - offset) and one f32 scale per nested block.
    let nbs = nested.blocksize;
    let nested_blocks = blocks.div_ceil(nbs);
    let offset = temper_quant::torch_mean(host);
    let map = be.stream.clone_htod(&nested.map[..]).map_err(&alloc)?;
    let mut codes = be.stream.alloc_zeros::<u8>(blocks.max(1)).map_err(&alloc)?;
    let mut nested_absmax = be
        .stream
        .alloc_zeros::<f32>(nested_blocks.max(1))
        .map_err(&alloc)?;
    let nested_bytes = blocks + 4 * nested_blocks + 4 * 256;
    be.accounting.add(nested_bytes);
    q.bytes += nested_bytes;
    if blocks > 0 {
        let (b64, nbs32) = (blocks as u64, nbs as u32);
        launch!(
            be,
            be.kernel(QUANTIZE_BLOCKWISE, DType::F32)?,
            per_block(nested_blocks, 2 * nbs),
            OP,
            &*absmax,
            &offset,
            &map,
            &mut nested_absmax,
            &mut codes,
            &b64,
            &nbs32
        )?;
    }
    q.scales = Scales::Nested {
        codes,
        map,
        nested: nested_absmax,
        nested_blocksize: nbs as u32,
        offset,
    };
    be.accounting.sub(4 * blocks);
    q.bytes -= 4 * blocks;
    Ok(q)
}
