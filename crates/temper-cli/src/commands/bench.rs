//! `temper bench --model DIR [--seq N] [--batch B] [--steps S] [--lora-r R]`: times LoRA
//! training steps on random tokens, as the peers' benchmark scripts do, and prints one JSON
//! line: median step time, tokens/s, and peak device memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use temper_core::{Backend, CpuBackend};
use temper_model::{Checkpointing, LmRows, LoraConfig, LoraParams, Model, StepCtx, Target};
use temper_train::{AdamW, AdamWConfig};

use crate::device::{self, DeviceChoice};

pub struct BenchArgs {
    pub model: PathBuf,
    pub seq: usize,
    pub batch: usize,
    pub steps: usize,
    pub lora_r: usize,
    pub checkpointing: bool,
    /// Layer inputs kept in pinned host memory.
    pub offload: bool,
    pub device: String,
    pub dtype: String,
    /// Frozen linear layers quantised to 4 or 8 bits on load.
    pub load: temper_model::LoadOptions,
    /// AdamW moments in host memory (paged_adamw_32bit).
    pub moments_on_host: bool,
    /// Time every op on the device and report where the steps' time goes.
    pub profile: bool,
}

pub fn run(mut args: BenchArgs) -> Result<()> {
    args.model = crate::model_source::resolve(&args.model)?;
    match device::resolve(&args.device, &args.dtype)? {
        DeviceChoice::Cpu => run_on(Arc::new(CpuBackend::new()), &args, None, None),
        DeviceChoice::Cuda(be) => {
            let sync = be.clone();
            let driver = be.clone();
            let peak = temper_model::flops::bf16_peak_flops(be.device_name());
            let r = run_on(
                be,
                &args,
                Some(Box::new(move || sync.synchronize().map_err(Into::into))),
                peak,
            );
            if let Ok((free, total)) = driver.driver_memory() {
                eprintln!(
                    "bench: the driver counts {:.2} GiB in use on this GPU (every process, CUDA context included)",
                    (total - free) as f64 / (1u64 << 30) as f64
                );
            }
            r
        }
    }
}

type Sync = Box<dyn Fn() -> Result<()>>;

/// Tokens per step for `--seq` x `--batch`, checked against the model's positions and the
/// most one step may hold.
fn bench_tokens(seq: usize, batch: usize, max_positions: usize) -> Result<usize> {
    if seq < 2 || seq > max_positions {
        anyhow::bail!(
            "--seq {seq} must be between 2 and the model's max_position_embeddings {max_positions}"
        );
    }
    seq.checked_mul(batch)
        .filter(|&n| n > 0 && n <= crate::commands::plan::MAX_STEP_TOKENS)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--seq {seq} x --batch {batch} must be between 1 and {} tokens",
                crate::commands::plan::MAX_STEP_TOKENS
            )
        })
}

/// `peak_flops`: the device's dense bf16 peak when known, for the MFU.
fn run_on<B: Backend>(
    be: Arc<B>,
    args: &BenchArgs,
    sync: Option<Sync>,
    peak_flops: Option<f64>,
) -> Result<()> {
    let t0 = Instant::now();
    let model = Model::load_with(be.clone(), &args.model, &args.load)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    // What loading alone took: host memory's high-water mark, and device memory then.
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let load_peak_rss_gib = crate::device::peak_rss_bytes().map(|b| gib(b as f64));
    let load_device_peak_gib = gib(be.peak_bytes() as f64);
    if args.steps == 0 || args.lora_r == 0 {
        anyhow::bail!("--steps and --lora-r must be at least 1");
    }
    let (seq, batch) = (args.seq, args.batch);
    let n = bench_tokens(seq, batch, model.cfg.max_positions)?;
    let lora_cfg = LoraConfig {
        r: args.lora_r,
        alpha: 2.0 * args.lora_r as f32,
        dropout: 0.0,
        use_rslora: false,
        targets: Target::ALL.to_vec(),
    };
    let mut lora = LoraParams::init(&*be, &model.cfg, &lora_cfg, 0)?;
    let mut opt = AdamW::new(
        &*be,
        &lora,
        AdamWConfig {
            on_host: args.moments_on_host,
            ..AdamWConfig::default()
        },
    )?;
    let ckpt = if args.checkpointing && args.offload {
        Checkpointing::EveryLayerOnHost
    } else if args.checkpointing {
        Checkpointing::EveryLayer
    } else {
        Checkpointing::Off
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut times = Vec::with_capacity(args.steps);
    let mut losses = Vec::with_capacity(args.steps);
    // Device milliseconds by "stage/op", summed over the profiled (steady) steps.
    let mut profile: std::collections::BTreeMap<String, f64> = Default::default();
    let mut profiled_steps = 0usize;
    let warmup = args.steps.min(3);
    for step in 0..args.steps {
        if args.profile && step == warmup {
            be.profile_enable(true);
        }
        let ids: Vec<u32> = (0..n)
            .map(|_| rng.random_range(0..model.cfg.vocab as u32))
            .collect();
        let rows = LmRows::new(ids, seq);
        let tb = rows.batch();
        let counted = rows.loss_tokens();
        let t = Instant::now();
        let token_losses = model.forward_backward(
            &mut lora,
            &tb,
            1.0 / counted as f32,
            ckpt,
            &StepCtx {
                training: true,
                seed: step as u64,
            },
        )?;
        be.profile_stage("optimizer");
        opt.update(&*be, &mut lora, 2e-4)?;
        lora.zero_grads(&*be)?;
        if let Some(sync) = &sync {
            sync()?;
        }
        times.push(t.elapsed().as_secs_f64());
        if args.profile && step >= warmup {
            for (label, ms) in be.profile_take()? {
                *profile.entry(label).or_default() += ms;
            }
            profiled_steps += 1;
        }
        losses.push(token_losses.iter().map(|&x| x as f64).sum::<f64>() / counted as f64);
    }
    // The first steps include kernel compilation, allocator warm-up and the first pinned host
    // allocations: up to three are left out, always leaving at least one step.
    let mut steady: Vec<f64> = times
        .iter()
        .copied()
        .skip(times.len().saturating_sub(1).min(3))
        .collect();
    steady.sort_by(f64::total_cmp);
    let median = steady[steady.len() / 2];
    let per_step: Vec<(String, f64)> = {
        let mut v: Vec<(String, f64)> = profile
            .iter()
            .map(|(k, ms)| (k.clone(), ms / profiled_steps.max(1) as f64))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    };
    let profiled_ms: f64 = per_step.iter().map(|(_, ms)| ms).sum();
    let attention_ms: f64 = per_step
        .iter()
        .filter(|(k, _)| k.ends_with("/attention"))
        .map(|(_, ms)| ms)
        .sum();
    if args.profile {
        print_profile(&per_step, median * 1e3, n, &model.cfg);
    }
    // Model FLOPs (what the step needs, without checkpointing's recompute) per second, and
    // their share of the device's peak.
    let flops_per_token = temper_model::flops::model_flops_per_token(&model.cfg, &lora_cfg, seq);
    let model_flops = flops_per_token * n as f64 / median;
    let report = serde_json::json!({
        "case": format!(
            "temper-{}-{}{}",
            be.name(),
            be.compute_dtype().suffix(),
            match args.load.quantize {
                Some(q) => format!("-{}{}", q.quant_type.name(), if q.double_quant { "-dq" } else { "" }),
                None if args.load.int8 => "-int8".into(),
                None => String::new(),
            }
        ),
        "checkpoint_offload": args.offload,
        "optimizer_moments_on_host": args.moments_on_host,
        "seq": seq,
        "batch": batch,
        "lora_r": args.lora_r,
        "trainable": lora.numel(),
        "step_s_median": median,
        "tokens_per_s": n as f64 / median,
        "model_gflop_per_token": flops_per_token / 1e9,
        "model_tflops_per_s": model_flops / 1e12,
        "mfu": peak_flops.map(|p| model_flops / p),
        "peak_gib": be.peak_bytes() as f64 / (1u64 << 30) as f64,
        // Paged AdamW moments in managed memory (TEMPER_PAGED_MEMORY=managed): on the GPU while
        // it has room, outside peak_gib as bitsandbytes' pages are outside PyTorch's peak.
        "paged_managed_gib": be.paged_managed_bytes() as f64 / (1u64 << 30) as f64,
        "load_s": load_s,
        "load_peak_rss_gib": load_peak_rss_gib,
        "load_device_peak_gib": load_device_peak_gib,
        "loss_first": losses.first(),
        "loss_last": losses.last(),
        "attention_share": (args.profile && profiled_ms > 0.0).then(|| attention_ms / profiled_ms),
        "profile_ms_per_step": args.profile.then(|| serde_json::Map::from_iter(
            per_step.iter().map(|(k, ms)| (k.clone(), serde_json::json!((ms * 1e3).round() / 1e3)))
        )),
    });
    println!("{report}");
    Ok(())
}

/// The profile as a table on stderr: each "stage/op" with its milliseconds per step and share,
/// then the sums per op kind across stages.
fn print_profile(
    per_step: &[(String, f64)],
    step_ms: f64,
    tokens: usize,
    cfg: &temper_model::ModelConfig,
) {
    let total: f64 = per_step.iter().map(|(_, ms)| ms).sum();
    eprintln!(
        "profile: {total:.1} ms of device time per step (wall {step_ms:.1} ms), {tokens} tokens, {} layers",
        cfg.layers
    );
    eprintln!("{:<40}{:>10}{:>8}", "stage/op", "ms/step", "share");
    for (label, ms) in per_step {
        eprintln!(
            "{label:<40}{ms:>10.2}{:>7.1}%",
            100.0 * ms / total.max(1e-9)
        );
    }
    let mut by_op: std::collections::BTreeMap<&str, f64> = Default::default();
    for (label, ms) in per_step {
        let op = label.rsplit('/').next().unwrap_or(label);
        *by_op.entry(op).or_default() += ms;
    }
    let mut by_op: Vec<_> = by_op.into_iter().collect();
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    eprintln!("by op kind:");
    for (op, ms) in by_op {
        eprintln!("  {op:<38}{ms:>10.2}{:>7.1}%", 100.0 * ms / total.max(1e-9));
    }
}
