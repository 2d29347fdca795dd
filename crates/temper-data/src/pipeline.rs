//! The whole data path for training: files -> rows -> tokenised examples (cached on
//! disk) -> eval split -> truncation or packing, with counts for the summary line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::cache::{self, Cached, KeyHasher};
use crate::error::{DataError, Result};
use crate::format::{to_row, DatasetFormat};
use crate::pack::{pack_with, unpacked, Overflow, PackedRow};
use crate::source::{data_files, read_records, Record};
use crate::template::{ChatTemplate, CHATML_TEMPLATE};
use crate::tokenize::{tokenize_sft, AssistantMasks, Example, SftOptions};
use crate::tokenizer::Tokenizer;
use crate::IGNORE_INDEX;

/// Which chat template renders conversations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TemplateChoice {
    /// The tokenizer's own (`chat_template` of tokenizer_config.json).
    #[default]
    Tokenizer,
    /// temper's ChatML template with generation blocks.
    ChatMl,
    /// Jinja source given in the config (read from a file by the caller).
    Source(String),
}

/// Everything that decides the prepared data.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// Training files or folders.
    pub train: Vec<PathBuf>,
    /// Evaluation files or folders; when empty, `eval_split` of the training rows.
    pub eval: Vec<PathBuf>,
    /// Fraction of training rows held out for evaluation (0 = none).
    pub eval_split: f64,
    pub format: DatasetFormat,
    pub template: TemplateChoice,
    pub sft: SftOptions,
    pub max_seq_len: usize,
    pub packing: bool,
    pub overflow: Overflow,
    pub skip_bad_rows: bool,
    pub seed: u64,
    /// Where tokenised examples are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

/// Counts for one split.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub rows_read: usize,
    pub skipped: usize,
    pub sequences: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
    /// Sequences dropped because truncation left them with no trained token.
    pub dropped_fully_masked: usize,
    /// Sequences longer than max_seq_len whose trained tokens all lay past the cut: they
    /// had something to train before truncation and nothing after.
    pub truncated_away: usize,
    /// Sequences longer than max_seq_len (truncated, or split when packing overflows).
    pub too_long: usize,
    pub rows: usize,
    /// tokens / (rows * max_seq_len).
    pub packing_efficiency: f64,
}

/// The prepared data.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub train: Vec<PackedRow>,
    pub eval: Vec<PackedRow>,
    /// Training sequences before packing (truncated when not packing).
    pub train_examples: Vec<Example>,
    pub train_stats: Stats,
    pub eval_stats: Stats,
    /// True when the tokenised examples came from the cache.
    pub cache_hit: bool,
    pub cache_file: Option<PathBuf>,
    /// The first few bad rows skipped (`skip_bad_rows`), as "file:line: why".
    pub skipped_examples: Vec<String>,
    /// How settings were decided for this data (e.g. which assistant masks `Auto` chose).
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// Runs the pipeline with `tok` (its template replaced as `cfg.template` says).
pub fn prepare(tok: &Tokenizer, cfg: &DataConfig) -> Result<Prepared> {
    let t0 = Instant::now();
    let tok = with_template(tok, &cfg.template)?;
    let mut notes = Vec::new();
    let resolved;
    let cfg = if cfg.sft.assistant_masks == AssistantMasks::Auto {
        let masks = cfg.sft.assistant_masks.for_template(tok.chat_template());
        if masks == AssistantMasks::Prefix && tok.chat_template().is_some() {
            notes.push(
                "assistant_only_loss: the chat template has no {% generation %} blocks, so \
                 assistant turns are found by rendering prefixes of each conversation \
                 (assistant_masks: prefix)"
                    .to_string(),
            );
        }
        let mut c = cfg.clone();
        c.sft.assistant_masks = masks;
        resolved = c;
        &resolved
    } else {
        cfg
    };
    if cfg.sft.assistant_masks == AssistantMasks::Generation {
        if let Some(t) = tok.chat_template() {
            if !t.has_generation_markers() {
                return Err(crate::tokenize::no_generation_markers());
            }
        }
    }
    let mut out = Prepared {
        notes,
        ..Prepared::default()
    };
    let (mut train, hit, file) = tokenized(&tok, cfg, &cfg.train, &mut out.skipped_examples)?;
    out.cache_hit = hit;
    out.cache_file = file;
    out.train_stats.rows_read = train.rows_read;
    out.train_stats.skipped = train.skipped;
    let mut eval = if !cfg.eval.is_empty() {
        let (e, _, _) = tokenized(&tok, cfg, &cfg.eval, &mut out.skipped_examples)?;
        out.eval_stats.rows_read = e.rows_read;
        out.eval_stats.skipped = e.skipped;
        e.examples
    } else if cfg.eval_split > 0.0 {
        let n = train.examples.len();
        let k = ((n as f64 * cfg.eval_split).round() as usize).clamp(1, n.saturating_sub(1));
        // A seeded permutation (stream u64::MAX: never an epoch's) picks the held-out rows.
        let order = crate::shuffle::shuffled_order(n, cfg.seed, u64::MAX);
        let mut held = vec![false; n];
        for &i in &order[..k.min(n)] {
            held[i] = true;
        }
        let all = std::mem::take(&mut train.examples);
        let (e, t): (Vec<_>, Vec<_>) = all.into_iter().enumerate().partition(|(i, _)| held[*i]);
        train.examples = t.into_iter().map(|(_, e)| e).collect();
        e.into_iter().map(|(_, e)| e).collect()
    } else {
        Vec::new()
    };
    let (rows, ex) = arrange(cfg, train.examples, &mut out.train_stats);
    out.train = rows;
    out.train_examples = ex;
    let (rows, _) = arrange(cfg, std::mem::take(&mut eval), &mut out.eval_stats);
    out.eval = rows;
    out.seconds = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// The tokenizer with the chosen template in place of its own.
fn with_template(tok: &Tokenizer, choice: &TemplateChoice) -> Result<Tokenizer> {
    let source = match choice {
        TemplateChoice::Tokenizer => return Ok(tok.clone()),
        TemplateChoice::ChatMl => {
            for t in ["<|im_start|>", "<|im_end|>"] {
                if tok.token_to_id(t).is_none() {
                    return Err(DataError::Template(format!(
                        "chat_template: chatml needs the token {t} in the vocabulary of {}",
                        tok.dir().join("tokenizer.json").display()
                    )));
                }
            }
            CHATML_TEMPLATE.to_string()
        }
        TemplateChoice::Source(s) => s.clone(),
    };
    let mut t = ChatTemplate::new(
        &source,
        tok.bos_token().map(str::to_string),
        tok.eos_token().map(str::to_string),
    )?
    .with_origin("the chat_template key of the config");
    if let Some(p) = tok.pad_token() {
        t = t.with_var("pad_token", p);
    }
    let mut tok = tok.clone();
    tok.set_chat_template(Some(t));
    Ok(tok)
}

/// Why a row gave no example.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowError {
    /// A bad row: an error, or skipped and counted with skip_bad_rows.
    Bad,
    /// An empty messages list: nothing to train, always skipped and counted.
    Empty,
    /// The chat template ran out of its budget: an error whatever skip_bad_rows says.
    Fatal,
    /// Not tried, after a fatal error on another row.
    Stopped,
}

/// Tokenised examples of some sources, from the cache when it has them.
fn tokenized(
    tok: &Tokenizer,
    cfg: &DataConfig,
    sources: &[PathBuf],
    skipped_examples: &mut Vec<String>,
) -> Result<(Cached, bool, Option<PathBuf>)> {
    let mut files = Vec::new();
    for s in sources {
        files.extend(data_files(s)?);
    }
    let cache_file = match &cfg.cache_dir {
        Some(dir) => Some(cache::path_for(dir, &cache_key(tok, cfg, &files)?)),
        None => None,
    };
    if let Some(c) = cache_file.as_deref().and_then(cache::load) {
        return Ok((c, true, cache_file));
    }
    let mut records: Vec<Record> = Vec::new();
    for f in &files {
        records.extend(read_records(f)?);
    }
    // A template over its budget fails on every row, each costing the whole budget: the
    // first one stops the others.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<std::result::Result<Example, (String, RowError)>> = records
        .par_iter()
        .map(|r| {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err((String::new(), RowError::Stopped));
            }
            let row = r
                .value
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|v| to_row(v, cfg.format))
                .map_err(|m| (format!("{}: {m}", r.origin), RowError::Bad))?;
            if matches!(&row, crate::rows::Row::Messages(m) if m.is_empty()) {
                return Err((
                    format!("{}: the messages list is empty", r.origin),
                    RowError::Empty,
                ));
            }
            tokenize_sft(tok, &row, &cfg.sft).map_err(|e| {
                let kind = if matches!(e, DataError::TemplateLimit(_)) {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    RowError::Fatal
                } else {
                    RowError::Bad
                };
                (format!("{}: {e}", r.origin), kind)
            })
        })
        .collect();
    if let Some((m, _)) = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .find(|(_, k)| *k == RowError::Fatal)
    {
        return Err(DataError::Row(m.clone()));
    }
    let mut c = Cached {
        rows_read: records.len(),
        ..Default::default()
    };
    drop(records);
    for r in results {
        match r {
            Ok(e) => c.examples.push(e),
            Err((m, kind)) if kind == RowError::Empty || cfg.skip_bad_rows => {
                c.skipped += 1;
                if skipped_examples.len() < 5 {
                    skipped_examples.push(m);
                }
            }
            Err((m, _)) => {
                return Err(DataError::Row(format!(
                    "{m}\n(set `skip_bad_rows: true` to skip such rows and count them)"
                )))
            }
        }
    }
    if let Some(p) = &cache_file {
        if let Err(e) = cache::save(p, &c) {
            eprintln!(
                "warning: cannot write the dataset cache {}: {e}",
                p.display()
            );
        }
    }
    Ok((c, false, cache_file))
}

fn cache_key(tok: &Tokenizer, cfg: &DataConfig, files: &[PathBuf]) -> Result<String> {
    let mut h = KeyHasher::new();
    h.str(concat!("temper-data ", env!("CARGO_PKG_VERSION")));
    h.str(&format!(
        "{:?} {:?} {}",
        cfg.format, cfg.sft, cfg.skip_bad_rows
    ));
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| DataError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    h.bytes(&read(&tok.dir().join("tokenizer.json"))?);
    let tc = tok.dir().join("tokenizer_config.json");
    if tc.exists() {
        h.bytes(&read(&tc)?);
    }
    h.str(tok.chat_template().map_or("", |t| t.source()));
    for f in files {
        h.str(&f.display().to_string());
        h.bytes(&read(f)?);
    }
    Ok(h.hex())
}

/// Truncates (dropping sequences left with nothing to train, as TRL) or packs.
fn arrange(
    cfg: &DataConfig,
    mut examples: Vec<Example>,
    stats: &mut Stats,
) -> (Vec<PackedRow>, Vec<Example>) {
    let trains = |labels: &[i32]| labels.iter().any(|&l| l != IGNORE_INDEX);
    let truncates = !cfg.packing || cfg.overflow == Overflow::Truncate;
    stats.too_long = examples
        .iter()
        .filter(|e| e.input_ids.len() > cfg.max_seq_len)
        .count();
    stats.truncated_away = examples
        .iter()
        .filter(|e| {
            truncates
                && e.labels.len() > cfg.max_seq_len
                && trains(&e.labels)
                && !trains(&e.labels[..cfg.max_seq_len])
        })
        .count();
    let rows = if cfg.packing {
        let rows = pack_with(&examples, cfg.max_seq_len, cfg.overflow);
        if cfg.overflow == Overflow::Truncate {
            for e in &mut examples {
                e.input_ids.truncate(cfg.max_seq_len);
                e.labels.truncate(cfg.max_seq_len);
            }
        }
        rows
    } else {
        let before = examples.len();
        for e in &mut examples {
            e.input_ids.truncate(cfg.max_seq_len);
            e.labels.truncate(cfg.max_seq_len);
        }
        examples.retain(|e| e.labels.iter().any(|&l| l != IGNORE_INDEX));
        stats.dropped_fully_masked = before - examples.len();
        unpacked(&examples)
    };
    stats.sequences = rows.iter().map(|r| r.seq_lens.len()).sum();
    stats.tokens = rows.iter().map(PackedRow::len).sum();
    stats.trained_tokens = rows
        .iter()
        .map(|r| r.labels.iter().filter(|&&l| l != IGNORE_INDEX).count())
        .sum();
    stats.rows = rows.len();
    stats.packing_efficiency = if rows.is_empty() {
        0.0
    } else {
        stats.tokens as f64 / (rows.len() * cfg.max_seq_len) as f64
    };
    (rows, examples)
}
