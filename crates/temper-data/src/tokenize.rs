//! Rows to token ids and loss labels.

use std::ops::Range;

use rayon::prelude::*;

use crate::error::{DataError, Result};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizeOptions {
    /// Append the tokenizer's eos token to `Text` and `PromptCompletion` rows (unless
    /// it is already the last token). Conversations end as their template says.
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

/// Tokenises one row and marks which tokens are trained.
///
/// - `Text`: `encode(text, add_special_tokens=true)` (+ eos), every token trained.
/// - `PromptCompletion`: as TRL's SFTTrainer: the ids are `encode(prompt + completion,
///   true)` (+ eos), and the first `len(encode(prompt, true))` of them get -100. Unlike
///   TRL, tokens a post-processor appends to the prompt (an eos) are not counted as
///   prompt, and when a token merges across the prompt/completion boundary (the joint
///   ids do not start with the prompt's) the mask comes from byte offsets: a token is
///   trained when it starts inside the completion. (We do not concatenate
///   `encode(prompt) ++ encode(completion)`: the joint ids are what the model sees
///   when it is given the same text at inference.)
/// - `Messages`: rendered with the chat template and tokenised without special tokens
///   (the template writes BOS itself); only assistant turns, each with the marker that
///   closes it (`<|im_end|>`, `<|eot_id|>`, eos), are trained. See [`assistant_spans`].
///
/// A leading double BOS (the text already began with the BOS string and the
/// post-processor added another) is collapsed to one.
pub fn tokenize_row(tok: &Tokenizer, row: &Row, opts: &TokenizeOptions) -> Result<Example> {
    let mut ex = match row {
        Row::Text(text) => tokenize_text(tok, text, opts)?,
        Row::PromptCompletion { prompt, completion } => {
            tokenize_prompt_completion(tok, prompt, completion, opts)?
        }
        Row::Messages(messages) => tokenize_messages(tok, messages)?,
    };
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

fn eos_for_append(tok: &Tokenizer) -> Result<u32> {
    tok.eos_id().ok_or_else(|| {
        DataError::Row(format!(
            "append_eos needs an eos token, but {} sets no \"eos_token\" found in \
             tokenizer.json's vocabulary",
            tok.dir().join("tokenizer_config.json").display()
        ))
    })
}

/// Removes a leading double BOS (the text began with the BOS string and the
/// post-processor added another).
fn collapse_double_bos(tok: &Tokenizer, ex: &mut Example) {
    if let (Some(b), Some(&x), Some(&y)) = (tok.bos_id(), ex.input_ids.first(), ex.input_ids.get(1))
    {
        if x == b && y == b {
            ex.input_ids.remove(0);
            ex.labels.remove(0);
        }
    }
}

/// Appends a trained eos unless `append_eos` is off or eos is already last.
fn push_eos(tok: &Tokenizer, ex: &mut Example, opts: &TokenizeOptions) -> Result<()> {
    if opts.append_eos {
        let eos = eos_for_append(tok)?;
        if ex.input_ids.last() != Some(&eos) {
            ex.input_ids.push(eos);
            ex.labels.push(eos as i32);
        }
    }
    Ok(())
}

fn tokenize_text(tok: &Tokenizer, text: &str, opts: &TokenizeOptions) -> Result<Example> {
    let input_ids = tok.encode(text, true)?;
    let labels = input_ids.iter().map(|&id| id as i32).collect();
    let mut ex = Example { input_ids, labels };
    collapse_double_bos(tok, &mut ex);
    push_eos(tok, &mut ex, opts)?;
    Ok(ex)
}

fn tokenize_prompt_completion(
    tok: &Tokenizer,
    prompt: &str,
    completion: &str,
    opts: &TokenizeOptions,
) -> Result<Example> {
    let p = tok.encoding(prompt, true)?;
    let j = tok.encoding(&format!("{prompt}{completion}"), true)?;
    let (pm, jm) = (p.get_special_tokens_mask(), j.get_special_tokens_mask());
    // The prompt's tokens up to its last text token: tokens a post-processor appends
    // (an eos) come after the completion in the joint encoding.
    let n_prompt = match pm.iter().rposition(|&m| m == 0) {
        Some(k) => k + 1,
        None => jm.iter().take_while(|&&m| m == 1).count(),
    };
    let ids = j.get_ids();
    let trained: Vec<bool> = if ids.len() >= n_prompt && ids[..n_prompt] == p.get_ids()[..n_prompt]
    {
        (0..ids.len()).map(|t| t >= n_prompt).collect()
    } else {
        // A token merged across the boundary: label by byte offsets instead. Text
        // tokens starting in the completion are trained; post-processor tokens are
        // trained when they come after the last text token.
        let last_text = jm.iter().rposition(|&m| m == 0);
        j.get_offsets()
            .iter()
            .zip(jm)
            .enumerate()
            .map(|(t, (&(start, _), &m))| {
                if m == 0 {
                    start >= prompt.len()
                } else {
                    last_text.is_some_and(|k| t > k)
                }
            })
            .collect()
    };
    let labels = ids
        .iter()
        .zip(&trained)
        .map(|(&id, &tr)| if tr { id as i32 } else { IGNORE_INDEX })
        .collect();
    let mut ex = Example {
        input_ids: ids.to_vec(),
        labels,
    };
    collapse_double_bos(tok, &mut ex);
    push_eos(tok, &mut ex, opts)?;
    Ok(ex)
}

fn tokenize_messages(tok: &Tokenizer, messages: &[Message]) -> Result<Example> {
    let tpl = tok
        .chat_template()
        .ok_or_else(|| DataError::NoChatTemplate {
            dir: tok.dir().to_path_buf(),
        })?;
    let full = tpl.render(messages, false)?;
    let spans = assistant_spans(tok, tpl, messages, &full)?;
    label_spans(tok, &full, &spans)
}

/// Byte ranges of `full` (the whole rendered conversation) that are trained: one per
/// assistant message, in order.
///
/// For assistant message `i`, its span is what rendering `messages[..=i]` adds to
/// rendering `messages[..i]` with `add_generation_prompt=true`: the assistant's text and
/// its end-of-turn marker. Whitespace the template writes after that marker (ChatML's
/// `"\n"` after `<|im_end|>`) is not trained. When the template ignores
/// `add_generation_prompt`, the difference also holds the assistant header; the span
/// then starts where the message's (stripped) content does.
///
/// When the prefixes do not line up with the full rendering (templates that render
/// earlier turns differently, e.g. dropping reasoning), or a prefix fails to render,
/// the span is found by searching for the message's (stripped) content after the
/// previous span, plus the special token that directly follows it.
fn assistant_spans(
    tok: &Tokenizer,
    tpl: &ChatTemplate,
    messages: &[Message],
    full: &str,
) -> Result<Vec<Range<usize>>> {
    let mut spans = Vec::new();
    let mut cursor = 0usize;
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let by_prefix = match (
            tpl.render(&messages[..i], true),
            tpl.render(&messages[..=i], false),
        ) {
            (Ok(before), Ok(through))
                if through.starts_with(&before)
                    && full.starts_with(&through)
                    && before.len() >= cursor =>
            {
                let mut span = trim_after_marker(tok, full, before.len()..through.len());
                // A template that ignores add_generation_prompt leaves the assistant
                // header in the difference: start at the content instead.
                if tpl.render(&messages[..i], false).ok().as_deref() == Some(before.as_str()) {
                    let needle = m.content.trim();
                    if let Some(k) = full[span.clone()]
                        .find(needle)
                        .filter(|_| !needle.is_empty())
                    {
                        span.start += k;
                    }
                }
                Some(span)
            }
            _ => None,
        };
        let span = match by_prefix {
            Some(s) => s,
            None => locate_by_content(tok, full, cursor, &m.content).ok_or_else(|| {
                DataError::Row(format!(
                    "cannot locate assistant message {i} in the rendered conversation: \
                     the chat template renders prefixes of the conversation differently \
                     and the message's content was not found after position {cursor}"
                ))
            })?,
        };
        cursor = span.end;
        spans.push(span);
    }
    Ok(spans)
}

/// Drops trailing whitespace from a span when what precedes it is a special token.
fn trim_after_marker(tok: &Tokenizer, full: &str, span: Range<usize>) -> Range<usize> {
    let s = &full[span.clone()];
    let t = s.trim_end();
    if t.len() < s.len() && tok.special_texts().iter().any(|m| t.ends_with(m.as_str())) {
        span.start..span.start + t.len()
    } else {
        span
    }
}

fn locate_by_content(
    tok: &Tokenizer,
    full: &str,
    from: usize,
    content: &str,
) -> Option<Range<usize>> {
    let needle = content.trim();
    if needle.is_empty() {
        return None;
    }
    let start = from + full.get(from..)?.find(needle)?;
    let mut end = start + needle.len();
    let rest = &full[end..];
    let after_ws = rest.trim_start();
    if let Some(m) = tok
        .special_texts()
        .iter()
        .find(|m| after_ws.starts_with(m.as_str()))
    {
        end += rest.len() - after_ws.len() + m.len();
    }
    Some(start..end)
}

/// Tokenises `full` without special tokens and labels the tokens inside `spans`.
///
/// First piece by piece (untrained text, span, untrained text, ...), which labels
/// exactly; that is kept only when it equals tokenising `full` in one go (the ids the
/// model sees must not depend on where the spans are). Otherwise the whole text's
/// tokens are labelled by their byte offsets: a token is trained when it starts
/// inside a span.
fn label_spans(tok: &Tokenizer, full: &str, spans: &[Range<usize>]) -> Result<Example> {
    let mut pieces: Vec<(Range<usize>, bool)> = Vec::new();
    let mut pos = 0;
    for s in spans {
        if s.start > pos {
            pieces.push((pos..s.start, false));
        }
        if s.end > s.start {
            pieces.push((s.clone(), true));
        }
        pos = pos.max(s.end);
    }
    if pos < full.len() {
        pieces.push((pos..full.len(), false));
    }
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    for (range, trained) in pieces {
        let piece = tok.encode(&full[range], false)?;
        labels.extend(
            piece
                .iter()
                .map(|&id| if trained { id as i32 } else { IGNORE_INDEX }),
        );
        ids.extend(piece);
    }
    let whole = tok.encoding(full, false)?;
    if whole.get_ids() == ids.as_slice() {
        return Ok(Example {
            input_ids: ids,
            labels,
        });
    }
    let ids = whole.get_ids().to_vec();
    let labels = ids
        .iter()
        .zip(whole.get_offsets())
        .map(|(&id, &(start, _))| {
            if spans.iter().any(|s| s.contains(&start)) {
                id as i32
            } else {
                IGNORE_INDEX
            }
        })
        .collect();
    Ok(Example {
        input_ids: ids,
        labels,
    })
}
