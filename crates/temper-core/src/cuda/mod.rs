//! The CUDA backend: buffers in device memory with a storage type (f32, bf16 or f16), GEMMs
//! through cuBLAS with f32 accumulation, every other op an NVRTC kernel from `kernels/*.cu`
//! beside its CPU twin in `src/cpu/`. The CUDA libraries are loaded at run time, so the same
//! binary runs on machines without them ([`CudaBackend::new`] says which library is missing
//! instead of failing).

mod attention;
mod buffer;
pub mod compile;
mod cross_entropy;
mod elementwise;
mod flash;
mod gemm;
mod host;
mod int8;
mod layers;
mod multi_tensor;
mod ops;
mod optim8;
mod paged;
mod profile;
mod quant;
mod staging;

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig};

pub use buffer::CudaBuf;
pub use flash::flash_head_dims;
pub use host::{CudaHost, CudaMapped};
pub use int8::CudaInt8;
pub use optim8::CudaState8;
pub use paged::PagedMemory;
pub use quant::CudaQuant;

use crate::memory::Accounting;
use crate::{CoreError, DType, Result};

/// Bytes of the cuBLAS workspace the backend allocates (and counts) once.
const CUBLAS_WORKSPACE: usize = 32 << 20;
/// Index arrays kept on the device for reuse (see `upload_u32`).
const INDEX_CACHE: usize = 16;

/// Arrays as the host passed them, each with its copy on the device, most recent first.
type UploadCache<T> = std::sync::Mutex<Vec<(Vec<T>, Arc<CudaSlice<T>>)>>;

/// Entry points instantiated once per storage type, by source file (each module lists the
/// kernels of its file).
const PER_TYPE: &[(&str, &[&str])] = &[
    ("elementwise.cu", elementwise::KERNELS),
    ("layers.cu", layers::KERNELS),
    ("attention.cu", attention::KERNELS),
    ("cross_entropy.cu", cross_entropy::KERNELS),
    (
        "dequant.cu",
        &[quant::DEQUANT4, quant::DEQUANT4_UNITS, int8::DEQUANT_INT8],
    ),
    (
        "quant.cu",
        &[quant::QUANTIZE_4BIT, int8::QUANTIZE_INT8_ROWS],
    ),
];

/// Entry points compiled for f32 only (optimizer state and parameters are always f32), by
/// source file.
const F32_ONLY: &[(&str, &[&str])] = &[
    ("elementwise.cu", elementwise::F32_KERNELS),
    ("optim8.cu", &[optim8::ADAMW8BIT]),
    ("quant.cu", &[quant::QUANTIZE_BLOCKWISE]),
];

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Copies between pinned host memory and the device (layer inputs), beside `stream`.
    copy_stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: HashMap<String, CudaFunction>,
    accounting: Arc<Accounting>,
    device_name: String,
    compute_dtype: DType,
    host_pool: host::HostPool,
    staging: staging::StagingCell,
    flash: flash::FlashKernels,
    profiler: profile::Profiler,
    /// Where paged optimizer state lives (`TEMPER_PAGED_MEMORY`), and the managed bytes held.
    paged_memory: paged::PagedMemory,
    /// The optimizer's ops over all adapter tensors in one launch each (`multi_tensor.rs`);
    /// `TEMPER_MULTI_TENSOR=0` launches once per tensor instead.
    multi_tensor: bool,
    /// 4-bit weights dequantised by `dequant4_units` (`TEMPER_DEQUANT=units`) instead of
    /// `dequant4`: the same values, another memory layout of the work.
    dequant_units: bool,
    managed: Arc<std::sync::atomic::AtomicUsize>,
    /// Recently uploaded index arrays, newest first.
    index_cache: UploadCache<u32>,
    /// Tensor tables of the multi-tensor kernels, by content (`multi_tensor.rs`).
    table_cache: UploadCache<u64>,
    /// Held for cuBLAS for the backend's lifetime (counted in the accounting).
    _workspace: CudaBuf,
}

fn dev_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CoreError {
    move |e| CoreError::Device(format!("{op}: {e:?}"))
}

fn blas_err(e: cudarc::cublas::result::CublasError) -> CoreError {
    CoreError::Device(format!("cuBLAS: {e:?}"))
}

/// Why the CUDA backend cannot start here, or None when every library it needs loads.
pub fn unavailable_reason() -> Option<String> {
    let path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    // SAFETY: these only try to dlopen the libraries.
    let checks: [(&str, bool); 3] = unsafe {
        [
            (
                "libcuda.so (the NVIDIA driver)",
                cudarc::driver::sys::is_culib_present(),
            ),
            ("libnvrtc.so", cudarc::nvrtc::sys::is_culib_present()),
            ("libcublas.so", cudarc::cublas::sys::is_culib_present()),
        ]
    };
    for (lib, present) in checks {
        if !present {
            return Some(format!(
                "{lib} could not be loaded (LD_LIBRARY_PATH={path:?}); on a machine with an NVIDIA GPU, add the CUDA library folder, e.g. /usr/local/cuda/lib64, to LD_LIBRARY_PATH"
            ));
        }
    }
    match CudaContext::device_count() {
        Ok(0) => Some("the NVIDIA driver reports no GPU".into()),
        Ok(_) => None,
        Err(e) => Some(format!("the NVIDIA driver could not list GPUs: {e:?}")),
    }
}

/// The storage type `auto` picks on GPU `ordinal`: bf16 from Ampere (8.0) on, f16 before
/// (trained with dynamic loss scaling).
pub fn default_dtype(ordinal: usize) -> Result<DType> {
    if let Some(reason) = unavailable_reason() {
        return Err(CoreError::Device(reason));
    }
    let ctx = CudaContext::new(ordinal).map_err(dev_err("creating the CUDA context"))?;
    let (major, _) = ctx
        .compute_capability()
        .map_err(dev_err("compute capability"))?;
    Ok(if major >= 8 { DType::BF16 } else { DType::F16 })
}

/// A grid-stride launch over n elements.
fn grid_stride(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 8192) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of ROW_THREADS per row.
fn per_row(rows: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (ROW_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Threads per block of row kernels (RMSNorm, cross-entropy rows, attention probabilities).
const ROW_THREADS: u32 = 256;

macro_rules! launch {
    ($self:ident, $f:expr, $cfg:expr, $op:expr, $($arg:expr),* $(,)?) => {{
        use cudarc::driver::PushKernelArg as _;
        let f = $f;
        let mut builder = $self.stream.launch_builder(f);
        $( builder.arg($arg); )*
        // SAFETY: every kernel's arguments match its CUDA signature in kernels/*.cu, and the
        // buffer sizes were checked by the calling method.
        unsafe { builder.launch($cfg) }
            .map(|_| ())
            .map_err(|e| $crate::CoreError::Device(format!("{}: {e:?}", $op)))
    }};
}
pub(crate) use launch;

/// A buffer as an op needs it: the caller's own, or a converted copy.
enum Converted<'a> {
    Same(&'a CudaBuf),
    Owned(CudaBuf),
}

impl Deref for Converted<'_> {
    type Target = CudaBuf;
    fn deref(&self) -> &CudaBuf {
        match self {
            Converted::Same(b) => b,
            Converted::Owned(b) => b,
        }
    }
}

impl CudaBackend {
    /// Starts on GPU `ordinal` with f32 activations and weights.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_dtype(ordinal, DType::F32)
    }

    /// Starts on GPU `ordinal`: loads the libraries, compiles (or reads cached) kernels.
    /// Activations and frozen weights are stored as `compute_dtype`.
    pub fn with_dtype(ordinal: usize, compute_dtype: DType) -> Result<Self> {
        if let Some(reason) = unavailable_reason() {
            return Err(CoreError::Device(reason));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev_err("creating the CUDA context"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(dev_err("compute capability"))?;
        if compute_dtype == DType::BF16 && major < 8 {
            return Err(CoreError::Device(format!(
                "bfloat16 needs compute capability 8.0 (Ampere) or newer; this GPU is {major}.{minor}: use float16 or float32"
            )));
        }
        let device_name = ctx.name().map_err(dev_err("device name"))?;
        let arch = compile::arch_for(major, minor)?;
        // Streams are ordered by events the backend records itself (host.rs); cudarc's
        // automatic per-buffer events would add two events to every allocation.
        // SAFETY: called before any buffer or second stream exists in this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let copy_stream = ctx
            .new_stream()
            .map_err(dev_err("creating the copy stream"))?;
        keep_freed_memory_pooled(&ctx)?;
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err)?;
        let mut kernels = HashMap::new();
        let mut flash = None;
        let override_dir = compile::source_override_dir();
        for (file, src) in compile::SOURCES {
            // The wgmma kernels exist for sm_90 only (compute_90a), in place of mma.sync ones.
            let hopper = *file == "flash_hopper.cu";
            let wgmma_asked = flash
                .as_ref()
                .is_some_and(|f: &flash::FlashKernels| f.wants_wgmma());
            if hopper && (major != 9 || !wgmma_asked) {
                continue;
            }
            let src = match &override_dir {
                Some(dir) => compile::read_override(dir, file)?.unwrap_or_else(|| src.to_string()),
                None => src.to_string(),
            };
            let ptx = compile::compile(file, &src, if hopper { "compute_90a" } else { arch })?;
            let module = ctx
                .load_module(ptx)
                .map_err(dev_err("loading a kernel module"))?;
            if *file == "flash_attention.cu" {
                flash = Some(flash::FlashKernels::load(&ctx, &module, &src, major)?);
                continue;
            }
            if hopper {
                if let Some(flash) = flash.as_mut() {
                    flash.add_hopper(&ctx, &module, &src)?;
                }
                continue;
            }
            let mut names: Vec<String> = vec![];
            if let Some((_, bases)) = PER_TYPE.iter().find(|(f, _)| f == file) {
                for base in *bases {
                    for dt in DTYPES {
                        names.push(format!("{base}_{}", dt.suffix()));
                    }
                }
            }
            if let Some((_, f32_only)) = F32_ONLY.iter().find(|(f, _)| f == file) {
                names.extend(
                    f32_only
                        .iter()
                        .map(|n| format!("{n}_{}", DType::F32.suffix())),
                );
            }
            if *file == "elementwise.cu" {
                for from in DTYPES {
                    for to in DTYPES {
                        names.push(elementwise::cast_name(from, to));
                    }
                }
            }
            for name in names {
                let f = module
                    .load_function(&name)
                    .map_err(|e| CoreError::Device(format!("kernel {name} in {file}: {e:?}")))?;
                kernels.insert(name, f);
            }
        }
        let flash = flash.ok_or_else(|| {
            CoreError::Device("flash_attention.cu is missing from the kernel sources".into())
        })?;
        let accounting = Arc::new(Accounting::default());
        let workspace = stream
            .alloc_zeros::<u8>(CUBLAS_WORKSPACE)
            .map_err(dev_err("alloc cuBLAS workspace"))?;
        {
            let (ptr, _guard) = workspace.device_ptr(&stream);
            // SAFETY: the workspace outlives the handle (both live in the backend, and the
            // handle is dropped first: fields drop in declaration order).
            unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    CUBLAS_WORKSPACE,
                )
            }
            .result()
            .map_err(blas_err)?;
        }
        accounting.add(CUBLAS_WORKSPACE);
        let workspace = CudaBuf {
            data: workspace,
            len: CUBLAS_WORKSPACE / 4,
            dtype: DType::F32,
            accounting: accounting.clone(),
        };
        Ok(CudaBackend {
            ctx,
            stream,
            copy_stream,
            blas,
            kernels,
            accounting,
            device_name,
            compute_dtype,
            host_pool: host::HostPool::default(),
            staging: staging::StagingCell::default(),
            flash,
            profiler: profile::Profiler::default(),
            paged_memory: paged::PagedMemory::from_env()?,
            multi_tensor: env_choice("TEMPER_MULTI_TENSOR", &[("1", true), ("0", false)], true)?,
            dequant_units: env_choice(
                "TEMPER_DEQUANT",
                &[("units", true), ("bytes", false)],
                false,
            )?,
            managed: Default::default(),
            index_cache: Default::default(),
            table_cache: Default::default(),
            _workspace: workspace,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev_err("synchronize"))
    }

    /// Free and total device memory as the driver sees it (the whole process).
    pub fn driver_memory(&self) -> Result<(usize, usize)> {
        self.ctx.bind_to_thread().map_err(dev_err("bind"))?;
        cudarc::driver::result::mem_get_info().map_err(dev_err("mem_get_info"))
    }

    /// The stream every op of this backend runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn kernel(&self, base: &str, dt: DType) -> Result<&CudaFunction> {
        self.kernel_named(&format!("{base}_{}", dt.suffix()))
    }

    /// A loaded entry point by its full name.
    fn kernel_named(&self, name: &str) -> Result<&CudaFunction> {
        self.kernels
            .get(name)
            .ok_or_else(|| CoreError::Device(format!("kernel {name} was not loaded")))
    }

    fn wrap(&self, data: CudaSlice<u8>, len: usize, dtype: DType) -> CudaBuf {
        self.accounting.add(len * dtype.size());
        CudaBuf {
            data,
            len,
            dtype,
            accounting: self.accounting.clone(),
        }
    }

    fn alloc(&self, n: usize, dtype: DType) -> Result<CudaBuf> {
        let data = self
            .stream
            .alloc_zeros::<u8>(n * dtype.size())
            .map_err(dev_err("alloc"))?;
        Ok(self.wrap(data, n, dtype))
    }

    /// [`CudaBackend::alloc`] without the zero fill, for buffers the next op writes in full.
    fn alloc_uninit(&self, n: usize, dtype: DType) -> Result<CudaBuf> {
        // SAFETY: the bytes are plain data of no particular value; every caller's next op
        // writes all of them before anything reads them.
        let data =
            unsafe { self.stream.alloc::<u8>(n * dtype.size()) }.map_err(dev_err("alloc"))?;
        Ok(self.wrap(data, n, dtype))
    }

    /// Index arrays (positions, token bounds, attention tiles) on the device. A step passes the
    /// same few arrays to many ops (every layer's RoPE, every attention call), so the last
    /// [`INDEX_CACHE`] uploads are kept by content and reused instead of copied again.
    fn upload_u32(&self, host: &[u32]) -> Result<Arc<CudaSlice<u32>>> {
        self.upload_cached(&self.index_cache, host, INDEX_CACHE, "indices")
    }

    /// `host` on the device, reused while one of the `keep` most recent uploads in `cache`
    /// holds the same values (most recent first).
    fn upload_cached<T: cudarc::driver::DeviceRepr + PartialEq + Clone>(
        &self,
        cache: &UploadCache<T>,
        host: &[T],
        keep: usize,
        what: &'static str,
    ) -> Result<Arc<CudaSlice<T>>> {
        let mut cache = cache
            .lock()
            .map_err(|_| CoreError::Device(format!("{what} cache lock poisoned")))?;
        if let Some(i) = cache.iter().position(|(h, _)| h.as_slice() == host) {
            let hit = cache.remove(i);
            let dev = hit.1.clone();
            cache.insert(0, hit);
            return Ok(dev);
        }
        let dev = Arc::new(
            self.stream
                .clone_htod(host)
                .map_err(|e| CoreError::Device(format!("upload {what}: {e:?}")))?,
        );
        cache.insert(0, (host.to_vec(), dev.clone()));
        cache.truncate(keep);
        Ok(dev)
    }

    /// The device address of element `offset` of `b`.
    fn ptr(&self, b: &CudaBuf, offset: usize) -> u64 {
        let (p, _guard) = b.data.device_ptr(&self.stream);
        p + (offset * b.dtype.size()) as u64
    }

    /// `b` stored as `dt`: itself, or a converted copy.
    fn converted<'a>(&self, b: &'a CudaBuf, dt: DType) -> Result<Converted<'a>> {
        if b.dtype == dt {
            return Ok(Converted::Same(b));
        }
        let out = self.alloc_uninit(b.len, dt)?;
        elementwise::cast(self, self.ptr(&out, 0), dt, self.ptr(b, 0), b.dtype, b.len)?;
        Ok(Converted::Owned(out))
    }
}

/// The value of `name` among `choices` (unset or empty: `default`); any other value is an
/// error that lists the choices.
fn env_choice<T: Copy>(name: &str, choices: &[(&str, T)], default: T) -> Result<T> {
    let value = std::env::var(name).unwrap_or_default();
    if value.is_empty() {
        return Ok(default);
    }
    choices
        .iter()
        .find(|(v, _)| *v == value)
        .map(|&(_, t)| t)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(v, _)| *v).collect();
            CoreError::Device(format!(
                "{name}={value:?}: use one of {} (or leave it unset)",
                names.join(", ")
            ))
        })
}

/// Freed device memory stays in the stream-ordered pool instead of going back to the driver
/// at every synchronisation (the default), so later allocations of the same sizes are cheap.
fn keep_freed_memory_pooled(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::result::{device, mem_pool};
    use cudarc::driver::sys::CUmemPool_attribute;
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut threshold = u64::MAX;
    // SAFETY: the device comes from a live context; the attribute takes a u64.
    unsafe {
        let pool = device::get_default_mem_pool(ctx.cu_device()).map_err(dev_err("memory pool"))?;
        mem_pool::set_attribute(
            pool,
            CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .map_err(dev_err("memory pool release threshold"))
    }
}

/// Checks that a buffer the kernels read as f32 is f32.
fn check_f32(op: &'static str, name: &'static str, b: &CudaBuf) -> Result<()> {
    if b.dtype == DType::F32 {
        Ok(())
    } else {
        Err(CoreError::Invalid {
            op,
            msg: format!("`{name}` must be float32, got {}", b.dtype),
        })
    }
}
