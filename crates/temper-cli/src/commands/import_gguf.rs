//! `temper import-gguf FILE.gguf --out DIR [--dtype bfloat16|float16|float32]`: a llama.cpp
//! GGUF file (llama or qwen2 architecture) to a Hugging Face folder that temper, transformers
//! and PEFT load: config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with
//! the GGUF's chat template), generation_config.json.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use temper_gguf::{import, GgufFile, OutDtype};

pub struct ImportGgufArgs {
    pub gguf: PathBuf,
    pub out: PathBuf,
    pub dtype: String,
}

pub fn run(args: ImportGgufArgs) -> Result<()> {
    let dtype = OutDtype::parse(&args.dtype).ok_or_else(|| {
        anyhow!(
            "--dtype `{}`: expected bfloat16, float16 or float32",
            args.dtype
        )
    })?;
    let t0 = Instant::now();
    let file = GgufFile::open(&args.gguf)?;
    let summary = import(&file, &args.out, dtype).with_context(|| {
        format!(
            "importing {} into {}",
            args.gguf.display(),
            args.out.display()
        )
    })?;
    println!(
        "{}: {} ({} tensors, {:.1}M parameters) written to {} as {} in {:.1}s",
        args.gguf.display(),
        summary.arch.key(),
        summary.tensors,
        summary.parameters as f64 / 1e6,
        summary.out.display(),
        dtype.torch_name(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
