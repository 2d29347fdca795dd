//! Text generation with a KV cache: the prompt runs once (prefill), then one token at a
//! time reuses every earlier position's keys and values. LoRA adapters apply unmerged,
//! through the same `linear_forward` as training. The training forward is untouched.
//!
//! ```text
//! logits = forward_cached(prompt)              // cache: prompt
//! loop: t = sample(logits); emit t
//!       stop on a stop id / max_new_tokens / a full context
//!       logits = forward_cached([t])           // cache: + t
//! ```

mod forward;
mod kv_cache;
pub mod sampling;

use std::path::Path;
use std::time::{Duration, Instant};

use temper_core::{Backend, CoreError};

pub use kv_cache::KvCache;
pub use sampling::{Sampler, Sampling};

use crate::error::{io_err, ModelError, Result};
use crate::lora::LoraParams;
use crate::model::Model;

/// What a generation runs with.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Tokens that end the generation (EOS, end of turn). The stop token is emitted and kept
    /// in the output, as transformers keeps it.
    pub stop_ids: Vec<u32>,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// This stop id was produced.
    StopToken(u32),
    MaxNewTokens,
    /// max_position_embeddings of config.json was reached.
    ContextFull,
}

/// The produced tokens and the time each phase took.
#[derive(Clone, Debug)]
pub struct Generation {
    /// New tokens, the stop token included.
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// The prompt's forward and the first token.
    pub prefill: Duration,
    /// Every later token.
    pub decode: Duration,
}

impl Generation {
    /// Tokens per second after the first token (the decode rate), None when there was only
    /// one token.
    pub fn decode_tokens_per_sec(&self) -> Option<f64> {
        let n = self.tokens.len().saturating_sub(1);
        (n > 0).then(|| n as f64 / self.decode.as_secs_f64().max(1e-9))
    }
}

fn invalid(msg: String) -> ModelError {
    ModelError::Core(CoreError::Invalid {
        op: "generate",
        msg,
    })
}

/// Generates up to `opts.max_new_tokens` tokens after `prompt`, calling `on_token` with
/// each as soon as it is chosen (to stream it). An error of `on_token` (of the caller's
/// type `E`, e.g. a closed stdout) ends the generation and is returned.
pub fn generate<B: Backend, E: From<ModelError>>(
    model: &Model<B>,
    lora: Option<&LoraParams<B>>,
    prompt: &[u32],
    opts: &GenerateOptions,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> std::result::Result<(), E>,
) -> std::result::Result<Generation, E> {
    let start = Instant::now();
    let max_pos = model.cfg.max_positions;
    if prompt.is_empty() {
        return Err(invalid("the prompt has no tokens".into()).into());
    }
    if prompt.len() > max_pos {
        return Err(invalid(format!(
            "the prompt has {} tokens, more than max_position_embeddings {max_pos} of config.json",
            prompt.len()
        ))
        .into());
    }
    let mut out = Generation {
        tokens: Vec::new(),
        stop: StopReason::MaxNewTokens,
        prefill: Duration::ZERO,
        decode: Duration::ZERO,
    };
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    // The last new token is never run through the model.
    let capacity = (prompt.len() + opts.max_new_tokens - 1).min(max_pos);
    let mut cache = KvCache::new(&*model.be, &model.cfg, capacity)?;
    let mut logits = model.forward_cached(lora, prompt, &mut cache)?; // (V)
    loop {
        let t = sampler.sample(&logits)?;
        out.tokens.push(t);
        if out.tokens.len() == 1 {
            out.prefill = start.elapsed();
        }
        on_token(t)?;
        if opts.stop_ids.contains(&t) {
            out.stop = StopReason::StopToken(t);
            break;
        }
        if out.tokens.len() >= opts.max_new_tokens {
            out.stop = StopReason::MaxNewTokens;
            break;
        }
        if cache.len() >= max_pos {
            out.stop = StopReason::ContextFull;
            break;
        }
        logits = model.forward_cached(lora, &[t], &mut cache)?;
    }
    out.decode = start.elapsed().saturating_sub(out.prefill);
    Ok(out)
}

/// The `eos_token_id` of `generation_config.json` in a model folder (an id or a list), empty
/// when the file or the key is absent. transformers' `generate` stops on these.
pub fn generation_config_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.clone(),
        what: "a generation config",
        source,
    })?;
    let ids = match v.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).collect(),
        Some(x) => x.as_u64().into_iter().collect(),
    };
    Ok(ids.into_iter().map(|i| i as u32).collect())
}
