//! `temper export-gguf --model DIR [--adapter DIR] --out FILE.gguf
//! --type f32|f16|bf16|q8_0|q4_0|q4_k_m|q5_k_m|q6_k [--lora-only]`: a model (with its adapter
//! merged in) as a GGUF file llama.cpp runs, quantised as llama.cpp's `quantize` would, or the
//! adapter alone as llama.cpp's LoRA GGUF.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use temper_core::DType;
use temper_gguf::{export, export_lora, ExportType};
use temper_model::merge::{merge_folder, MergeOptions};

#[derive(clap::Args, Debug)]
pub struct ExportGgufArgs {
    /// The model: a Hugging Face folder (bf16 / fp16 / f32, or 4 / 8 bits with --adapter) or
    /// a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT adapter: merged into the model first, or written alone with --lora-only.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The .gguf file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Type of the matrices: f32 | f16 | bf16 | q8_0 | q4_0 | q4_k_m | q5_k_m | q6_k (norms and
    /// biases stay f32; the quantised types mix types per tensor as llama.cpp's quantize does).
    /// --lora-only takes f32, f16, bf16 or q8_0.
    #[arg(long = "type", default_value = "bf16")]
    pub ty: String,
    /// Write the adapter alone (general.type = adapter), for llama.cpp's --lora.
    #[arg(long, requires = "adapter")]
    pub lora_only: bool,
    /// Replace an existing --out file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: ExportGgufArgs) -> Result<()> {
    let ty = ExportType::parse(&args.ty).ok_or_else(|| {
        anyhow!(
            "--type `{}`: use one of {}",
            args.ty,
            ExportType::ALL.map(ExportType::name).join(", ")
        )
    })?;
    if args.lora_only && ty.is_quantized() && ty != ExportType::Q8_0 {
        bail!(
            "--lora-only --type {}: llama.cpp adapters are f32, f16, bf16 or q8_0",
            ty.name()
        );
    }
    if args.out.exists() && !args.force {
        bail!(
            "{} exists; choose another --out or pass --force to replace it",
            args.out.display()
        );
    }
    let t0 = Instant::now();
    let model = crate::model_source::resolve(&args.model)?;
    let summary = match (&args.adapter, args.lora_only) {
        (Some(adapter), true) => export_lora(&model, adapter, &args.out, ty)
            .with_context(|| format!("exporting {}", adapter.display()))?,
        (Some(adapter), false) => {
            // Merged beside the output in the precision the export keeps, then exported.
            let tmp = args.out.with_extension("merging");
            let dtype = match ty {
                ExportType::F16 => DType::F16,
                ExportType::BF16 => DType::BF16,
                _ => DType::F32,
            };
            let opts = MergeOptions {
                dtype: Some(dtype),
                force: true,
                ..MergeOptions::default()
            };
            merge_folder(&model, adapter, &tmp, &opts).with_context(|| {
                format!(
                    "merging {} into {}",
                    adapter.display(),
                    args.model.display()
                )
            })?;
            let name = args
                .model
                .canonicalize()
                .ok()
                .and_then(|p| p.file_stem().map(|n| n.to_string_lossy().into_owned()));
            let s = export(&tmp, &args.out, ty, name.as_deref());
            let _ = std::fs::remove_dir_all(&tmp);
            s.with_context(|| format!("exporting the merged {}", args.model.display()))?
        }
        (None, _) => export(&model, &args.out, ty, None)
            .with_context(|| format!("exporting {}", args.model.display()))?,
    };
    println!(
        "{}{} ({}, {} tensors, {:.1} MB of tensor data in {}) written to {} in {:.1}s",
        if args.lora_only {
            "LoRA adapter of "
        } else {
            ""
        },
        args.model.display(),
        summary.arch,
        summary.tensors,
        summary.bytes as f64 / 1e6,
        ty.name(),
        summary.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
