//! `temper plan CONFIG.yaml [--key value ...]`: the predicted peak memory of a training run,
//! from config.json and the settings alone (no weights read, no GPU needed), and the
//! `max_memory` check `temper train` makes before it starts.

use std::path::PathBuf;

use anyhow::{bail, Result};
use temper_core::{Backend, DType};
use temper_model::plan::{plan, MemoryPlan, PlanDevice};
use temper_model::ModelConfig;

use crate::config::{self, TrainPlan};
use crate::device::DeviceChoice;

pub struct PlanArgs {
    pub config: PathBuf,
    pub overrides: Vec<(String, String)>,
    /// Search the longest max_seq_len that fits instead of planning the one configured.
    pub longest: bool,
}

/// Tokens per fused LM-head chunk (the model's default).
const LOSS_CHUNK: usize = 1024;

/// The prediction for a resolved training plan: micro-batches of at most
/// per_device_train_batch_size rows of max_seq_len tokens, on `device` in `dtype`. `temper
/// plan` and `temper train` both call it, so the two never disagree.
pub fn predict(
    p: &TrainPlan,
    dtype: DType,
    device: PlanDevice,
) -> Result<(ModelConfig, MemoryPlan)> {
    let cfg = ModelConfig::from_dir(&p.model_dir)?;
    let tokens = p
        .settings
        .micro_batch_size
        .checked_mul(p.max_seq_len)
        .filter(|&t| t <= MAX_STEP_TOKENS)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "per_device_train_batch_size {} x max_seq_len {} is more than {MAX_STEP_TOKENS} \
                 tokens in one micro-batch; lower one of them",
                p.settings.micro_batch_size,
                p.max_seq_len
            )
        })?;
    let m = plan(
        &cfg,
        &p.settings.lora,
        tokens,
        p.max_seq_len,
        p.settings.checkpointing,
        LOSS_CHUNK,
        dtype,
        device,
        temper_core::memory::host_available_bytes(),
    );
    // Paged AdamW keeps its two f32 moments in mapped host memory on the GPU.
    let m = if device == PlanDevice::Cuda && p.settings.adamw.on_host {
        let moments = temper_model::plan::adamw_moment_bytes(&cfg, &p.settings.lora);
        MemoryPlan {
            lora_and_optimizer: m.lora_and_optimizer.saturating_sub(moments),
            host: m.host + moments,
            ..m
        }
    } else {
        m
    };
    let m = match p.load.quantize {
        Some(q) => MemoryPlan {
            weights: temper_model::plan::weight_bytes_4bit(
                &cfg,
                dtype,
                q.blocksize,
                q.double_quant,
            ),
            ..m
        },
        None if p.load.int8 => MemoryPlan {
            weights: temper_model::plan::weight_bytes_8bit(&cfg, dtype),
            ..m
        },
        None => m,
    };
    Ok((cfg, m))
}

/// The most tokens one micro-batch may hold (16M, far above any real micro-batch): keeps
/// every size product of the plan (and of the activations) within 64 bits for any
/// config.json temper accepts, even with every layer's activations kept.
pub const MAX_STEP_TOKENS: usize = 1 << 24;

/// "1.23 GiB" or "45.6 MiB".
fn size(bytes: usize) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

pub fn describe(m: &MemoryPlan) -> String {
    format!(
        "predicted peak {} = weights {} + LoRA and AdamW {} + activations {}{}",
        size(m.total()),
        size(m.weights),
        size(m.lora_and_optimizer),
        size(m.activations),
        if m.host > 0 {
            format!("; pinned host memory {}", size(m.host))
        } else {
            String::new()
        }
    )
}

/// Refuses a plan above `max_memory`, or one whose pinned host memory is more than the host
/// has available, saying what would shrink it.
pub fn check(p: &TrainPlan, m: &MemoryPlan) -> Result<()> {
    check_host(m, temper_core::memory::host_available_bytes())?;
    if let Some(limit) = p.max_memory {
        if m.total() as u64 > limit {
            bail!(
                "{}, above max_memory {}: lower per_device_train_batch_size or max_seq_len \
                 (raising gradient_accumulation_steps keeps the effective batch){}",
                describe(m),
                size(limit as usize),
                if p.settings.checkpointing == temper_model::Checkpointing::Off {
                    ", or turn gradient_checkpointing on"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// Refuses pinned host memory beyond `available` (bytes; unknown: no check): pinning fails
/// there, mid-step, after the model has loaded.
fn check_host(m: &MemoryPlan, available: Option<u64>) -> Result<()> {
    match available {
        Some(avail) if m.host as u64 > avail => bail!(
            "{}, and the host has {} available: lower max_seq_len or \
             per_device_train_batch_size, or set checkpoint_offload: false (the layer inputs \
             then stay in device memory)",
            describe(m),
            size(avail as usize)
        ),
        _ => Ok(()),
    }
}

/// The line `temper train` prints before it starts and `temper plan` prints: one function,
/// so the two never disagree.
pub fn memory_line(m: &MemoryPlan) -> String {
    format!("memory: {}", describe(m))
}

pub fn run(args: PlanArgs) -> Result<()> {
    // The parking switches the step reads, refused here as `train` would refuse them.
    temper_model::parking::ParkingWanted::from_env().map_err(anyhow::Error::msg)?;
    let (file, base) = config::load(Some(&args.config), &args.overrides)?;
    let mut p = file.resolve(&base, None)?;
    p.model_dir = crate::model_source::resolve(&p.model_dir)?;
    // The device `train` would run on, opened as `train` opens it, so the prediction is the
    // one `train` makes. `device: cuda` on a machine without a GPU is planned as that GPU.
    // With a GPU here, the device memory free now is what --longest fits into by default.
    let mut device_free: Option<u64> = None;
    let (dtype, device) = match crate::device::resolve(&p.device, &p.dtype) {
        Ok(DeviceChoice::Cpu) => (DType::F32, PlanDevice::Cpu),
        Ok(DeviceChoice::Cuda(be)) => {
            device_free = be.driver_memory().ok().map(|(free, _)| free as u64);
            (be.compute_dtype(), PlanDevice::Cuda)
        }
        Err(e) if p.device == "cuda" => {
            let d = match p.dtype.as_str() {
                "auto" => DType::BF16,
                d => d.parse::<DType>().map_err(anyhow::Error::msg)?,
            };
            eprintln!("device: no usable GPU here ({e:#}); planned as a GPU would run it in {d}");
            (d, PlanDevice::Cuda)
        }
        Err(e) => return Err(e),
    };
    if args.longest {
        let limit = match (p.max_memory, &device_free) {
            (Some(limit), _) => limit,
            (None, Some(free)) => *free,
            (None, None) => bail!(
                "--longest needs the device memory to fit in: set max_memory to the GPU's \
                 (e.g. --max_memory 24GiB for an RTX 4090, 80GiB for an H100), or run it on \
                 the machine with the GPU"
            ),
        };
        return print_longest(&mut p, dtype, device, limit);
    }
    let (cfg, m) = predict(&p, dtype, device)?;
    println!(
        "model: {} layers, hidden {}, vocab {}; micro-batch {} x {} tokens; checkpointing {:?}; {dtype}",
        cfg.layers,
        cfg.hidden,
        cfg.vocab,
        p.settings.micro_batch_size,
        p.max_seq_len,
        p.settings.checkpointing,
    );
    println!("{}", memory_line(&m));
    check(&p, &m)
}

/// The longest max_seq_len (micro-batches of the configured size) whose predicted peak fits
/// `limit` bytes of device memory and whose pinned host memory fits what the host has
/// available, within the model's max_position_embeddings; printed with its plan.
fn print_longest(p: &mut TrainPlan, dtype: DType, device: PlanDevice, limit: u64) -> Result<()> {
    let host = temper_core::memory::host_available_bytes();
    let cfg = ModelConfig::from_dir(&p.model_dir)?;
    let batch = p.settings.micro_batch_size.max(1);
    let context = cfg.max_positions;
    let upper = context.min(MAX_STEP_TOKENS / batch);
    let mut fits = |seq: usize| -> Result<Option<MemoryPlan>> {
        p.max_seq_len = seq;
        let (_, m) = predict(p, dtype, device)?;
        let host_ok = host.is_none_or(|avail| m.host as u64 <= avail);
        Ok((m.total() as u64 <= limit && host_ok).then_some(m))
    };
    let Some(first) = fits(1)? else {
        bail!(
            "even 1 token per row does not fit in {} of device memory: {}",
            size(limit as usize),
            describe(&predict(p, dtype, device)?.1)
        );
    };
    // Bisection keeps a length that fits and one that does not, so L fits and L + 1 does not.
    // Memory grows with the length except where a longer step parks less on the host (the
    // residual, then the attention outputs, dropped when half of its memory no longer holds
    // them), which also shrinks the device's copy buffer: past such a step a longer length
    // can fit again, and L is the longest below it.
    let (mut lo, mut hi, mut best) = (1, upper + 1, first);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match fits(mid)? {
            Some(m) => (lo, best) = (mid, m),
            None => hi = mid,
        }
    }
    let host_text = host.map_or("unknown".to_string(), |h| size(h as usize));
    let bound = if lo == upper && upper == context {
        format!("the model's max_position_embeddings ({context}) comes first: set rope_scaling to go further")
    } else if lo == upper {
        format!("{MAX_STEP_TOKENS} tokens per micro-batch is temper's most")
    } else {
        p.max_seq_len = lo + 1;
        let next = predict(p, dtype, device)?.1;
        if next.total() as u64 > limit {
            "one token more needs more device memory".to_string()
        } else {
            "one token more needs more pinned host memory than is available: \
             checkpoint_offload: false keeps the layer inputs on the device instead"
                .to_string()
        }
    };
    println!(
        "longest max_seq_len: {lo} tokens x {batch} per micro-batch, within {} of device memory \
         and {host_text} of host memory available ({bound})",
        size(limit as usize),
    );
    println!("{}", memory_line(&best));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_host_memory_beyond_what_is_available_is_refused_with_the_fix() {
        let m = MemoryPlan {
            weights: 5 << 30,
            lora_and_optimizer: 400 << 20,
            activations: 3 << 30,
            host: 40 << 30,
        };
        assert!(check_host(&m, None).is_ok());
        assert!(check_host(&m, Some(64 << 30)).is_ok());
        let err = check_host(&m, Some(24 << 30)).unwrap_err().to_string();
        assert!(err.contains("pinned host memory 40.00 GiB"), "{err}");
        assert!(err.contains("24.00 GiB available"), "{err}");
        assert!(err.contains("checkpoint_offload: false"), "{err}");
    }
}
