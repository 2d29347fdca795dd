//! `temper init-model --shape NAME --out DIR` (tiny, llama2-7b, llama3-8b, qwen3-8b,
//! qwen3-tiny, phi3-mini, phi3-tiny, gemma-7b, gemma-tiny, gemma2-9b, gemma2-tiny, gemma3-1b,
//! gemma3-tiny): a random-weight Hugging Face folder (bf16 safetensors, config.json, a word-level tokenizer covering the whole
//! vocabulary) that transformers loads unchanged, for benchmarks of temper and its peers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use temper_model::init::{shape, write_random_model, SHAPES};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::Tokenizer;

pub struct InitModelArgs {
    pub shape: String,
    pub out: PathBuf,
    pub seed: u64,
}

pub fn run(args: InitModelArgs) -> Result<()> {
    let s = shape(&args.shape).ok_or_else(|| {
        let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        anyhow!(
            "--shape `{}` is not one of {}",
            args.shape,
            names.join(", ")
        )
    })?;
    let t0 = Instant::now();
    let params = write_random_model(s, &args.out, args.seed)
        .with_context(|| format!("writing {}", args.out.display()))?;
    write_tokenizer(&args.out, s.vocab)?;
    eprintln!(
        "wrote {} ({:.1}M parameters, bf16) to {} in {:.1}s",
        s.name,
        params as f64 / 1e6,
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A word-level tokenizer: `<unk>`, `<s>`, `</s>`, then `w3` .. `w{vocab-1}`, split on
/// whitespace. Enough for benchmarks on random tokens.
fn write_tokenizer(dir: &std::path::Path, vocab: usize) -> Result<()> {
    let mut map: HashMap<String, u32> = HashMap::with_capacity(vocab);
    for (i, special) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        map.insert(special.to_string(), i as u32);
    }
    for i in 3..vocab {
        map.insert(format!("w{i}"), i as u32);
    }
    let model = WordLevel::builder()
        .vocab(map.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .map_err(|e| anyhow!("building the tokenizer: {e}"))?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(WhitespaceSplit));
    let path = dir.join("tokenizer.json");
    tok.save(&path, false)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "model_max_length": 1_000_000,
    });
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
