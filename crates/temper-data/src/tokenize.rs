//! Rows to token ids and loss labels, as TRL 1.16's SFTTrainer prepares them.
//!
//! - `Text`: `tokenizer(text + eos)` (the eos string appended unless the text already
//!   ends with it), every token trained.
//! - `PromptCompletion`: `tokenizer(prompt + completion + eos)`; with completion-only
//!   loss the first `common_prefix_length(tokenizer(prompt), those ids)` tokens get -100.
//! - `Conversation`: the chat template renders `prompt` with the generation prompt and
//!   `prompt + completion` without; the completion starts where their tokens diverge.
//! - `Messages`: the rendered conversation, tokenised without special tokens (the
//!   template writes BOS itself).
//!
//! With assistant-only loss, only tokens overlapping the output of `{% generation %}`
//! blocks are trained (transformers' `return_assistant_tokens_mask`), or, with
//! [`AssistantMasks::Prefix`], the spans [`crate::prefix_masks`] finds. A token is
//! trained when every applicable mask says so.
//!
//! Differences from TRL (deliberate): a leading double BOS (the text already began with
//! the BOS string) is collapsed to one; no EOS string is appended when the tokenizer's
//! post-processor already appends EOS; an example whose assistant mask is empty is an
//! error naming the row, as in TRL.

use std::ops::Range;

use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::prefix_masks::assistant_spans;
use crate::rows::{Message, Row};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::IGNORE_INDEX;

/// Token ids and their labels. `labels[t]` is `input_ids[t]` where token `t` is trained
/// and -100 where it is not; labels are aligned with `input_ids`, NOT shifted (the
/// shift happens in [`crate::Batch`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Example {
    pub input_ids: Vec<u32>, // (len,)
    pub labels: Vec<i32>,    // (len,)
}

impl Example {
    /// Number of trained tokens.
    pub fn trained(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// How assistant-only loss finds the assistant tokens of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AssistantMasks {
    /// Every token of a conversation is trained (TRL's `assistant_only_loss=False`).
    #[default]
    Off,
    /// From the template's `{% generation %}` blocks; a template without them is an
    /// error (TRL's `assistant_only_loss=True`).
    Generation,
    /// From rendering prefixes of the conversation; works with templates that have no
    /// generation blocks (temper's own method).
    Prefix,
    /// `Generation` when the template has `{% generation %}` blocks, else `Prefix`
    /// ([`crate::prepare`] decides once and says which in its notes).
    Auto,
}

impl AssistantMasks {
    /// `Auto` made concrete for `tpl`; other values as they are.
    pub fn for_template(self, tpl: Option<&ChatTemplate>) -> AssistantMasks {
        match self {
            AssistantMasks::Auto if tpl.is_some_and(ChatTemplate::has_generation_markers) => {
                AssistantMasks::Generation
            }
            AssistantMasks::Auto => AssistantMasks::Prefix,
            m => m,
        }
    }
}

/// What is trained, in TRL's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SftOptions {
    /// Mask the prompt of prompt/completion rows (TRL's default for such rows).
    pub completion_only_loss: bool,
    /// Mask everything but assistant turns of conversations.
    pub assistant_masks: AssistantMasks,
    /// Append the eos string to text rows and completions (TRL always does).
    pub append_eos: bool,
}

impl Default for SftOptions {
    fn default() -> Self {
        SftOptions {
            completion_only_loss: true,
            assistant_masks: AssistantMasks::Off,
            append_eos: true,
        }
    }
}

/// The options of [`tokenize_row`], kept for callers that score rows as training used
/// to render them: completion-only prompt/completion rows and assistant-only
/// conversations (prefix method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizeOptions {
    /// Append the tokenizer's eos to `Text` and `PromptCompletion` rows.
    pub append_eos: bool,
    /// Keep at most this many tokens (the tail is dropped).
    pub max_seq_len: Option<usize>,
}

impl Default for TokenizeOptions {
    fn default() -> Self {
        TokenizeOptions {
            append_eos: true,
            max_seq_len: None,
        }
    }
}

/// [`tokenize_sft`] with completion-only loss and (for conversations) prefix assistant
/// masks, then truncated.
pub fn tokenize_row(tok: &Tokenizer, row: &Row, opts: &TokenizeOptions) -> Result<Example> {
    let sft = SftOptions {
        completion_only_loss: true,
        assistant_masks: if row.is_conversational() {
            AssistantMasks::Prefix
        } else {
            AssistantMasks::Off
        },
        append_eos: opts.append_eos,
    };
    let mut ex = tokenize_sft(tok, row, &sft)?;
    if let Some(n) = opts.max_seq_len {
        ex.input_ids.truncate(n);
        ex.labels.truncate(n);
    }
    Ok(ex)
}

/// [`tokenize_row`] over many rows in parallel; an error names the row's index.
pub fn tokenize_rows(
    tok: &Tokenizer,
    rows: &[Row],
    opts: &TokenizeOptions,
) -> Result<Vec<Example>> {
    rows.par_iter()
        .enumerate()
        .map(|(index, row)| {
            tokenize_row(tok, row, opts).map_err(|e| DataError::InRow {
                index,
                source: Box::new(e),
            })
        })
        .collect()
}

/// Tokenises one row and labels it as TRL's SFTTrainer does (see the module docs).
pub fn tokenize_sft(tok: &Tokenizer, row: &Row, opts: &SftOptions) -> Result<Example> {
    if opts.assistant_masks != AssistantMasks::Off && !row.is_conversational() {
        return Err(DataError::Row(
            "assistant-only loss needs conversational rows (\"messages\", or prompt and \
             completion as message lists), but this row is plain text"
                .into(),
        ));
    }
    let ex = match row {
        Row::Text(text) => {
            let text = with_eos(tok, text, opts)?;
            let ids = tok.encode(&text, true)?;
            let labels = ids.iter().map(|&id| id as i32).collect();
            collapse_double_bos(
                tok,
                Example {
                    input_ids: ids,
                    labels,
                },
            )
        }
        Row::PromptCompletion { prompt, completion } => {
            let completion = with_eos(tok, completion, opts)?;
            let prompt_ids = tok.encode(prompt, true)?;
            let ids = tok.encode(&format!("{prompt}{completion}"), true)?;
            let n = if opts.completion_only_loss {
                common_prefix_length(&prompt_ids, &ids)
            } else {
                0
            };
            let labels = label(&ids, |t| t >= n);
            collapse_double_bos(
                tok,
                Example {
                    input_ids: ids,
                    labels,
                },
            )
        }
        Row::Conversation { prompt, completion } => {
            let tpl = template(tok)?;
            let prompt_ids = tok.encode(&tpl.render(prompt, true)?, false)?;
            let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
            let (ids, assistant) = render_and_mask(tok, tpl, &all, opts.assistant_masks)?;
            let n = if opts.completion_only_loss {
                common_prefix_length(&prompt_ids, &ids)
            } else {
                0
            };
            let labels = label(&ids, |t| t >= n && assistant.as_ref().is_none_or(|m| m[t]));
            Example {
                input_ids: ids,
                labels,
            }
        }
        Row::Messages(messages) => {
            let tpl = template(tok)?;
            let (ids, assistant) = render_and_mask(tok, tpl, messages, opts.assistant_masks)?;
            let labels = label(&ids, |t| assistant.as_ref().is_none_or(|m| m[t]));
            Example {
                input_ids: ids,
                labels,
            }
        }
    };
    Ok(ex)
}

fn template(tok: &Tokenizer) -> Result<&ChatTemplate> {
    tok.chat_template()
        .ok_or_else(|| DataError::NoChatTemplate {
            dir: tok.dir().to_path_buf(),
        })
}

fn label(ids: &[u32], trained: impl Fn(usize) -> bool) -> Vec<i32> {
    ids.iter()
        .enumerate()
        .map(|(t, &id)| if trained(t) { id as i32 } else { IGNORE_INDEX })
        .collect()
}

/// TRL's `common_prefix_length`: where the prompt's ids and the full ids diverge.
pub fn common_prefix_length(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// `text + eos_token` unless `append_eos` is off, the text already ends with it, or the
/// tokenizer's post-processor appends EOS itself (`add_eos_token`; TRL would then give
/// two EOS, which nobody wants).
fn with_eos<'a>(
    tok: &Tokenizer,
    text: &'a str,
    opts: &SftOptions,
) -> Result<std::borrow::Cow<'a, str>> {
    if !opts.append_eos {
        return Ok(text.into());
    }
    let eos = tok.eos_token().ok_or_else(|| {
        DataError::Row(format!(
            "appending EOS needs an eos token, but {} sets no \"eos_token\"",
            tok.dir().join("tokenizer_config.json").display()
        ))
    })?;
    let post_processor_adds_eos = tok.encode("", true)?.last() == tok.eos_id().as_ref();
    Ok(if text.ends_with(eos) || post_processor_adds_eos {
        text.into()
    } else {
        format!("{text}{eos}").into()
    })
}

/// Removes a leading double BOS (the text began with the BOS string and the
/// post-processor added another).
fn collapse_double_bos(tok: &Tokenizer, mut ex: Example) -> Example {
    if let (Some(b), Some(&x), Some(&y)) = (tok.bos_id(), ex.input_ids.first(), ex.input_ids.get(1))
    {
        if x == b && y == b {
            ex.input_ids.remove(0);
            ex.labels.remove(0);
        }
    }
    ex
}

/// Renders a conversation, tokenises it without special tokens, and (unless masks are
/// off) marks the tokens that overlap an assistant span.
fn render_and_mask(
    tok: &Tokenizer,
    tpl: &ChatTemplate,
    messages: &[Message],
    masks: AssistantMasks,
) -> Result<(Vec<u32>, Option<Vec<bool>>)> {
    let masks = masks.for_template(Some(tpl));
    let (full, spans) = match masks {
        AssistantMasks::Auto => unreachable!("for_template resolves Auto"),
        AssistantMasks::Off => (tpl.render(messages, false)?, Vec::new()),
        AssistantMasks::Generation => {
            if !tpl.has_generation_markers() {
                return Err(no_generation_markers());
            }
            tpl.render_tracked(messages, false)?
        }
        AssistantMasks::Prefix => {
            let full = tpl.render(messages, false)?;
            let spans = assistant_spans(tok, tpl, messages, &full)?;
            (full, spans)
        }
    };
    let enc = tok.encoding(&full, false)?;
    let ids = enc.get_ids().to_vec();
    if masks == AssistantMasks::Off {
        return Ok((ids, None));
    }
    let mask = overlap_mask(enc.get_offsets(), &spans);
    if !mask.iter().any(|&m| m) {
        return Err(DataError::Row(
            "assistant-only loss: this conversation has no assistant tokens (no assistant \
             turn, or the template's {% generation %} blocks produced nothing)"
                .into(),
        ));
    }
    Ok((ids, Some(mask)))
}

/// The error for assistant-only loss with a template that has no generation blocks.
pub fn no_generation_markers() -> DataError {
    DataError::Template(
        "assistant_only_loss needs a chat template with {% generation %} ... \
         {% endgeneration %} around each assistant turn, and this one has none (TRL \
         refuses it too). Use a template that has them (`chat_template: FILE.jinja`, or \
         `chat_template: chatml` for a ChatML model), or set `assistant_masks: prefix` to \
         find assistant turns by rendering prefixes of each conversation"
            .into(),
    )
}

/// transformers' rule: a token is in the mask when its byte range overlaps a span.
/// `spans` are sorted and disjoint.
pub(crate) fn overlap_mask(offsets: &[(usize, usize)], spans: &[Range<usize>]) -> Vec<bool> {
    let mut mask = vec![false; offsets.len()];
    let mut k = 0;
    for (t, &(start, end)) in offsets.iter().enumerate() {
        while k < spans.len() && start >= spans[k].end {
            k += 1;
        }
        if k == spans.len() {
            break;
        }
        if end > spans[k].start {
            mask[t] = true;
        }
    }
    mask
}
