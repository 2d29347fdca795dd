//! `temper generate --model DIR|FILE.gguf [--adapter DIR] --prompt TEXT [--chat] ...`: text from a model
//! (and a LoRA adapter, applied unmerged), with a KV cache, streamed to stdout token by token.
//!
//! The prompt is encoded as `tokenizer(text)` encodes it in transformers (special tokens such
//! as a BOS added by the tokenizer's post-processor), or with `--chat` rendered through the
//! tokenizer's chat template with `add_generation_prompt` and encoded without adding anything,
//! as `apply_chat_template(..., tokenize=True)` does. Generation stops at max_new_tokens or
//! at any of: config.json's and generation_config.json's eos ids, the tokenizer's eos token,
//! and with `--chat` the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`, ...).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use temper_core::{Backend, CpuBackend};
use temper_data::{ChatTemplate, Message, Tokenizer};
use temper_model::generate::{
    generate, generation_config_eos_ids, GenerateOptions, Sampler, Sampling, StopReason,
};
use temper_model::{adapter, Model};

use crate::device::{self, DeviceChoice};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A Hugging Face model folder (config.json, safetensors, tokenizer.json), or a GGUF
    /// file (imported once, in float32, into a cache folder).
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter folder (written by temper or by PEFT), applied unmerged.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The prompt (with --chat: the user's message).
    #[arg(long)]
    pub prompt: String,
    /// Render the prompt as a user message through the tokenizer's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message placed before the prompt (needs --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax); otherwise sample from softmax(logits / temperature).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens holding this much probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler (default: from the clock, printed so the run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Device: auto | cpu | cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Storage of activations and weights on the GPU: auto | bfloat16 | float16 | float32.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Do not stop at EOS or end-of-turn tokens: always generate max_new_tokens (benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
}

pub fn run(mut args: GenerateArgs) -> Result<()> {
    // Bad sampling settings are refused before a GGUF --model is imported.
    sampling_of(&args).validate()?;
    args.model = crate::model_source::resolve(&args.model)?;
    match device::resolve(&args.device, &args.dtype)? {
        DeviceChoice::Cpu => run_on(Arc::new(CpuBackend::new()), args),
        DeviceChoice::Cuda(be) => run_on(be, args),
    }
}

fn run_on<B: Backend>(be: Arc<B>, args: GenerateArgs) -> Result<()> {
    let sampling = sampling_of(&args);
    let model = Model::load(be.clone(), &args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let tok = Tokenizer::from_dir(&args.model)
        .with_context(|| format!("loading the tokenizer of {}", args.model.display()))?;
    let lora = match &args.adapter {
        Some(dir) => Some(
            adapter::load(&*be, &model.cfg, dir)
                .with_context(|| format!("loading adapter {}", dir.display()))?,
        ),
        None => None,
    };

    let mut stop_ids = model.cfg.eos_token_ids.clone();
    stop_ids.extend(generation_config_eos_ids(&args.model)?);
    stop_ids.extend(tok.eos_id());
    let prompt_ids = if args.chat {
        let template = tok.chat_template().with_context(|| {
            format!(
                "--chat: {} has no chat_template in tokenizer_config.json",
                args.model.display()
            )
        })?;
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system.as_str()));
        }
        messages.push(Message::new("user", args.prompt.as_str()));
        let text = template
            .render(&messages, true)
            .context("rendering the chat template")?;
        stop_ids.extend(end_of_turn_id(&tok, template)?);
        tok.encode(&text, false)?
    } else {
        tok.encode(&args.prompt, true)?
    };
    stop_ids.sort_unstable();
    stop_ids.dedup();
    if args.ignore_eos {
        stop_ids.clear();
    }
    if prompt_ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }

    let seed = match args.seed {
        Some(s) => s,
        None => {
            let s = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            if !sampling.is_greedy() {
                eprintln!("seed {s} (pass --seed {s} to repeat this run)");
            }
            s
        }
    };
    let mut sampler = Sampler::new(sampling, seed)?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        stop_ids: stop_ids.clone(),
    };

    let mut stream = StreamDecoder::new(&tok);
    let mut stdout = std::io::stdout().lock();
    let out = generate(
        &model,
        lora.as_ref(),
        &prompt_ids,
        &opts,
        &mut sampler,
        |t| {
            if !stop_ids.contains(&t) {
                if let Some(text) = stream.push(t)? {
                    write_flush(&mut stdout, &text)?;
                }
            }
            anyhow::Ok(())
        },
    )?;
    let rest = stream.finish()?;
    write_flush(&mut stdout, &format!("{rest}\n"))?;

    let stop = match out.stop {
        StopReason::StopToken(t) => format!("stop token {t}"),
        StopReason::MaxNewTokens => "max_new_tokens".into(),
        StopReason::ContextFull => format!(
            "max_position_embeddings {} reached",
            model.cfg.max_positions
        ),
    };
    let rate = out
        .decode_tokens_per_sec()
        .map(|r| format!("{r:.1} tokens/s"))
        .unwrap_or_else(|| "-".into());
    eprintln!(
        "{} prompt tokens in {:.3} s, {} new tokens ({stop}); decode {rate} on {}",
        prompt_ids.len(),
        out.prefill.as_secs_f64(),
        out.tokens.len(),
        be.name()
    );
    Ok(())
}

fn sampling_of(args: &GenerateArgs) -> Sampling {
    Sampling {
        temperature: args.temperature,
        top_p: args.top_p,
    }
}

fn write_flush(w: &mut impl Write, text: &str) -> Result<()> {
    w.write_all(text.as_bytes())?;
    w.flush()?;
    Ok(())
}

/// The special token a chat template closes an assistant turn with: what the template
/// writes right after an assistant message's content, when that encodes to a special token
/// first (ChatML's `<|im_end|>`, Llama 3's `<|eot_id|>`, Gemma's `<end_of_turn>`).
fn end_of_turn_id(tok: &Tokenizer, template: &ChatTemplate) -> Result<Option<u32>> {
    const MARK: &str = "TemperEndOfTurnProbe";
    let conv = [Message::new("user", "Hi"), Message::new("assistant", MARK)];
    let Ok(text) = template.render(&conv, false) else {
        return Ok(None); // a template that refuses this conversation: rely on eos ids
    };
    let Some((_, after)) = text.rsplit_once(MARK) else {
        return Ok(None);
    };
    let ids = tok.encode(after.trim_start(), false)?;
    Ok(match ids.first() {
        Some(&id)
            if tok.decode(&[id], true)?.is_empty() && !tok.decode(&[id], false)?.is_empty() =>
        {
            Some(id)
        }
        _ => None,
    })
}

/// Turns a stream of token ids into text pieces, holding back a piece while it ends in an
/// incomplete UTF-8 character (U+FFFD) so multi-byte characters are printed whole. Text is
/// decoded from one token before the unprinted ones (`prefix`), so decoders that treat the
/// first token specially (a leading space) do not change what was already printed. Special
/// tokens are skipped.
struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the window that is decoded.
    prefix: usize,
    /// End of the printed part of that window.
    read: usize,
}

impl<'a> StreamDecoder<'a> {
    fn new(tok: &'a Tokenizer) -> Self {
        StreamDecoder {
            tok,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds a token; returns the text it completes, if any.
    fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let printed = self.tok.decode(&self.ids[self.prefix..self.read], true)?;
        let text = self.tok.decode(&self.ids[self.prefix..], true)?;
        if text.len() <= printed.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(new) = text.strip_prefix(printed.as_str()) else {
            return Ok(None);
        };
        let new = new.to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(Some(new))
    }

    /// The text still held back (an incomplete character at the very end, decoded as is).
    fn finish(&mut self) -> Result<String> {
        let printed = self.tok.decode(&self.ids[self.prefix..self.read], true)?;
        let text = self.tok.decode(&self.ids[self.prefix..], true)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(text
            .strip_prefix(printed.as_str())
            .map(str::to_string)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny_tokenizer() -> Tokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny/model");
        Tokenizer::from_dir(&dir).expect("tiny tokenizer")
    }

    #[test]
    fn streaming_prints_whole_characters_and_the_same_text() {
        let tok = tiny_tokenizer();
        let text = "Sure: héllo wörld ✓ 日本 and 🦀!";
        let ids = tok.encode(text, false).expect("encode");
        let mut stream = StreamDecoder::new(&tok);
        let (mut out, mut held) = (String::new(), 0);
        for &id in &ids {
            match stream.push(id).expect("push") {
                Some(piece) => {
                    assert!(!piece.contains('\u{FFFD}'), "a broken character: {piece:?}");
                    out.push_str(&piece);
                }
                None => held += 1,
            }
        }
        out.push_str(&stream.finish().expect("finish"));
        assert_eq!(out, tok.decode(&ids, true).expect("decode"));
        assert_eq!(out, text);
        // The byte-level tokenizer splits the multi-byte characters: some pieces waited.
        assert!(held >= 4, "only {held} tokens were held back");
    }

    #[test]
    fn special_tokens_are_not_printed() {
        let tok = tiny_tokenizer();
        let mut stream = StreamDecoder::new(&tok);
        let mut out = String::new();
        for id in tok.encode("Hi<|im_end|> there", false).expect("encode") {
            out.push_str(&stream.push(id).expect("push").unwrap_or_default());
        }
        out.push_str(&stream.finish().expect("finish"));
        assert_eq!(out, "Hi there");
    }

    #[test]
    fn chatml_end_of_turn_is_im_end() {
        let tok = tiny_tokenizer();
        let template = tok.chat_template().expect("tiny has a chat template");
        let id = end_of_turn_id(&tok, template).expect("probe");
        assert_eq!(id, tok.token_to_id("<|im_end|>"));
        assert!(id.is_some());
    }
}
