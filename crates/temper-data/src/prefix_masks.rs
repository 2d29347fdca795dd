//! Assistant spans of a chat template WITHOUT `{% generation %}` markers, found by
//! rendering prefixes of the conversation (temper's `assistant_masks: prefix`). TRL
//! refuses such templates for assistant-only loss (or swaps in its own training
//! template for the families it knows); this method works for any template whose
//! prefixes render as prefixes, and falls back to searching for the message text.

use std::ops::Range;

use crate::error::{DataError, Result};
use crate::rows::Message;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

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
pub(crate) fn assistant_spans(
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
