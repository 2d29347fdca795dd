//! `temper quantize MODEL_DIR --out DIR [--quant-type nf4|fp4] [--double-quant] [--blocksize 64]
//! [--compute-dtype bfloat16|float16] [--force]`: a bf16 / fp16 Hugging Face folder to
//! bitsandbytes' 4-bit layout, the files transformers writes for
//! `from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))` +
//! `save_pretrained` (and loads back, with or without a GPU). Tokenizer files come along.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use temper_quant::folder::quantize_folder_with;
use temper_quant::{ComputeDtype, QuantType, QuantizeOptions};

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// A Hugging Face model folder: config.json and bf16 / fp16 / f32 safetensors.
    pub model: PathBuf,
    /// The folder to write (created if needed; must be empty unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// 4-bit data type: nf4 | fp4.
    #[arg(long, default_value = "nf4")]
    pub quant_type: String,
    /// Quantise the block absmax too (QLoRA's double quantisation, ~0.4 bits/parameter less).
    #[arg(long)]
    pub double_quant: bool,
    /// Values per absmax block: a power of two from 32 to 4096.
    #[arg(long, default_value_t = 64)]
    pub blocksize: usize,
    /// The dtype 4-bit layers compute in (bnb_4bit_compute_dtype): bfloat16 | float16 | float32.
    #[arg(long, default_value = "bfloat16")]
    pub compute_dtype: String,
    /// Write into a non-empty --out folder, replacing its model files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let quant_type = QuantType::parse(&args.quant_type)
        .ok_or_else(|| anyhow!("--quant-type `{}`: expected nf4 or fp4", args.quant_type))?;
    let compute_dtype = ComputeDtype::parse(&args.compute_dtype).ok_or_else(|| {
        anyhow!(
            "--compute-dtype `{}`: expected bfloat16, float16 or float32",
            args.compute_dtype
        )
    })?;
    let opts = QuantizeOptions {
        quant_type,
        double_quant: args.double_quant,
        blocksize: args.blocksize,
        compute_dtype,
        force: args.force,
    };
    let t0 = Instant::now();
    let summary = quantize_folder_with(&args.model, &args.out, &opts, |done, total, file| {
        if total > 1 {
            eprintln!("[{done}/{total}] wrote {}", file.display());
        }
    })
    .with_context(|| {
        format!(
            "quantizing {} into {}",
            args.model.display(),
            args.out.display()
        )
    })?;
    println!(
        "{}: {} weights ({:.1}M parameters) in {}{} blocks of {}, {} tensors copied; \
         {:.1} MB -> {:.1} MB in {} in {:.1}s",
        args.model.display(),
        summary.quantized,
        summary.quantized_params as f64 / 1e6,
        quant_type.name(),
        if args.double_quant {
            " (double-quantised absmax)"
        } else {
            ""
        },
        args.blocksize,
        summary.copied,
        summary.bytes_in as f64 / 1e6,
        summary.bytes_out as f64 / 1e6,
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
