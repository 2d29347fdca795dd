//! `temper merge --model BASE --adapter DIR --out DIR [--dtype bfloat16|float16|float32]`: the
//! adapter folded into the base's weights, written as a Hugging Face folder (sharded
//! safetensors, config.json, generation_config.json, tokenizer files) that transformers and
//! vLLM load with no adapter.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use temper_core::DType;
use temper_model::merge::{merge_folder, MergeOptions, MergeSummary};
use temper_model::sharded_out::parse_size;
use temper_model::{LoadOptions, QuantType, QuantizeOnLoad};

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The base model: a Hugging Face folder (bf16 / fp16 / f32, or saved in 4 or 8 bits by
    /// bitsandbytes) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// The PEFT adapter folder (written by temper or by PEFT).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The folder to write (created if needed; must be empty unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Weights dtype: bfloat16 | float16 | float32 (default: the base's, bfloat16 for a
    /// quantised or GGUF base).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Largest shard file, as transformers' max_shard_size: 5GB, 500MB, 2GiB, bytes.
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
    /// Merge into the base quantised to 4 bits on load (nf4 | fp4), as a QLoRA run that used
    /// load_in_4bit trained against it.
    #[arg(long, value_name = "nf4|fp4")]
    pub load_in_4bit: Option<String>,
    /// With --load-in-4bit: the block scales were quantised too (bnb_4bit_use_double_quant).
    #[arg(long)]
    pub double_quant: bool,
    /// Merge into the base quantised to 8 bits on load (load_in_8bit).
    #[arg(long, conflicts_with = "load_in_4bit")]
    pub load_in_8bit: bool,
    /// Write into a non-empty --out folder, replacing its model files.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: MergeArgs) -> Result<()> {
    let is_gguf = args.model.is_file();
    let model = crate::model_source::resolve(&args.model)?;
    let dtype = match &args.dtype {
        Some(d) => Some(d.parse::<DType>().map_err(|e| anyhow!("--dtype: {e}"))?),
        // The GGUF import is in float32 whatever the file held: write bfloat16 unless asked.
        None if is_gguf => Some(DType::BF16),
        None => None,
    };
    let max_shard_bytes = parse_size(&args.max_shard_size).ok_or_else(|| {
        anyhow!(
            "--max-shard-size `{}`: give a size such as 5GB, 500MB, 2GiB or a number of bytes",
            args.max_shard_size
        )
    })?;
    let quantize = match &args.load_in_4bit {
        Some(t) => Some(QuantizeOnLoad {
            quant_type: QuantType::parse(t)
                .ok_or_else(|| anyhow!("--load-in-4bit `{t}`: use nf4 or fp4"))?,
            blocksize: 64,
            double_quant: args.double_quant,
        }),
        None if args.double_quant => {
            return Err(anyhow!("--double-quant needs --load-in-4bit nf4|fp4"));
        }
        None => None,
    };
    let opts = MergeOptions {
        dtype,
        max_shard_bytes,
        load: LoadOptions {
            quantize,
            int8: args.load_in_8bit,
        },
        force: args.force,
    };
    let t0 = Instant::now();
    let s = merge_folder(&model, &args.adapter, &args.out, &opts).with_context(|| {
        format!(
            "merging {} into {}",
            args.adapter.display(),
            args.model.display()
        )
    })?;
    if let Some(q) = &s.quantized_base {
        eprintln!("{}", quantized_warning(q, &s));
    }
    println!(
        "merged {} LoRA weights (r {}, alpha {}{}) into {}: {} tensors, {:.1}M parameters, \
         {} as {} in {} in {:.1}s",
        s.merged,
        s.lora.r,
        s.lora.alpha,
        if s.lora.use_rslora { ", rsLoRA" } else { "" },
        args.model.display(),
        s.tensors,
        s.parameters as f64 / 1e6,
        if s.shards == 1 {
            format!("{:.1} MB", s.bytes as f64 / 1e6)
        } else {
            format!("{} shards, {:.1} MB", s.shards, s.bytes as f64 / 1e6)
        },
        s.dtype,
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The warning for a merge into a quantised base: what the merged weights are and how large
/// the adapter's change is beside them.
fn quantized_warning(quant: &str, s: &MergeSummary) -> String {
    let mut msg = format!(
        "warning: the base is quantised ({quant}): merging is lossy. The merged weights are \
         the dequantised base plus the LoRA delta, rounded once to {}, not the original \
         weights plus the delta.",
        s.dtype
    );
    if let Some(e) = s.max_quant_error {
        msg.push_str(&format!(
            " Quantising moved the base weights by up to {e:.2e} of each weight's largest \
             value."
        ));
    }
    msg.push_str(&format!(
        " The delta is at most {:.2e} of its weight's largest value (max |delta| / max |W| \
         over {} merged weights)",
        s.max_delta_ratio, s.merged
    ));
    // A 4-bit step is about 1/8 of a block's largest value (NF4's codes near zero are 0.08
    // apart): a delta well below it does not survive quantising the merged model again.
    if s.max_delta_ratio < 0.1 {
        msg.push_str("; quantising the merged model to 4 bits again would lose most of it");
    }
    msg.push('.');
    msg
}
