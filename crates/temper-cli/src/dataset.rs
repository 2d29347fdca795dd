//! The data keys of the config -> temper-data's pipeline, and the summary it prints.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use temper_data::{
    AssistantMasks, DataConfig, DatasetFormat, Overflow, PackedRow, SftOptions, TemplateChoice,
    Tokenizer,
};

/// The config keys that decide the data, as written.
pub struct DataKeys<'a> {
    pub train: Vec<PathBuf>,
    pub eval: Vec<PathBuf>,
    pub eval_split: f64,
    pub dataset_format: &'a str,
    pub chat_template: Option<&'a str>,
    pub completion_only_loss: Option<bool>,
    pub assistant_only_loss: bool,
    pub assistant_masks: &'a str,
    pub packing_strategy: &'a str,
    pub skip_bad_rows: bool,
    pub cache_dir: Option<&'a str>,
    pub max_seq_len: usize,
    pub packing: bool,
    pub seed: u64,
}

/// Checks the data keys; `base` is the YAML file's folder.
pub fn resolve(k: DataKeys<'_>, base: &Path) -> Result<DataConfig> {
    let format = DatasetFormat::parse(k.dataset_format).ok_or_else(|| {
        anyhow!(
            "dataset_format `{}` is not one of auto, alpaca, sharegpt",
            k.dataset_format
        )
    })?;
    let masks = match (k.assistant_only_loss, k.assistant_masks) {
        (false, "auto" | "generation" | "prefix") => AssistantMasks::Off,
        (true, "auto") => AssistantMasks::Auto,
        (true, "generation") => AssistantMasks::Generation,
        (true, "prefix") => AssistantMasks::Prefix,
        (_, other) => bail!("assistant_masks `{other}` is not one of auto, generation, prefix"),
    };
    let overflow = match k.packing_strategy {
        "bfd" => Overflow::Truncate,
        "bfd_split" => Overflow::Split,
        other => bail!("packing_strategy `{other}` is not one of bfd, bfd_split"),
    };
    if !(0.0..1.0).contains(&k.eval_split) {
        bail!("eval_split must be in [0, 1), got {}", k.eval_split);
    }
    if k.eval_split > 0.0 && !k.eval.is_empty() {
        bail!("set eval_data or eval_split, not both");
    }
    let template = match k.chat_template {
        None => TemplateChoice::Tokenizer,
        Some(t) if t.eq_ignore_ascii_case("chatml") => TemplateChoice::ChatMl,
        Some(t) if t.contains("{%") || t.contains("{{") => TemplateChoice::Source(t.to_string()),
        Some(t) => {
            let p = if Path::new(t).is_absolute() {
                PathBuf::from(t)
            } else {
                base.join(t)
            };
            TemplateChoice::Source(
                std::fs::read_to_string(&p)
                    .with_context(|| format!("chat_template: reading {}", p.display()))?,
            )
        }
    };
    let cache_dir = match k.cache_dir {
        Some(s) if s.eq_ignore_ascii_case("none") || s.is_empty() => None,
        Some(s) => Some(match s.strip_prefix("~/") {
            Some(rest) => home()?.join(rest),
            None if Path::new(s).is_absolute() => PathBuf::from(s),
            None => base.join(s),
        }),
        None => temper_core::cache::dir("data"),
    };
    Ok(DataConfig {
        train: k.train,
        eval: k.eval,
        eval_split: k.eval_split,
        format,
        template,
        sft: SftOptions {
            completion_only_loss: k.completion_only_loss.unwrap_or(true),
            assistant_masks: masks,
            append_eos: true,
        },
        max_seq_len: k.max_seq_len,
        packing: k.packing,
        overflow,
        skip_bad_rows: k.skip_bad_rows,
        seed: k.seed,
        cache_dir,
    })
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("HOME is not set: give dataset_cache_dir a path, or none"))
}

pub struct Prepared {
    pub rows: Vec<PackedRow>,
    pub inner: temper_data::Prepared,
}

/// Runs the pipeline and prints its summary. `max_seq_len` and `packing` are in `cfg`
/// too; they are taken here so callers state what they train with.
pub fn prepare(
    tok: &Tokenizer,
    cfg: &DataConfig,
    max_seq_len: usize,
    packing: bool,
) -> Result<Prepared> {
    prepare_quietly(tok, cfg, max_seq_len, packing, false)
}

/// [`prepare`], printing the summary unless `quiet` (ranks other than 0).
pub fn prepare_quietly(
    tok: &Tokenizer,
    cfg: &DataConfig,
    max_seq_len: usize,
    packing: bool,
    quiet: bool,
) -> Result<Prepared> {
    let mut cfg = cfg.clone();
    cfg.max_seq_len = max_seq_len;
    cfg.packing = packing;
    let p = temper_data::prepare(tok, &cfg).context("preparing the dataset")?;
    if !quiet {
        eprint!("{}", summary(&cfg, &p));
    }
    Ok(Prepared {
        rows: p.train.clone(),
        inner: p,
    })
}

/// The summary lines: rows read and skipped, sequences, tokens, trained tokens, packing.
pub fn summary(cfg: &DataConfig, p: &temper_data::Prepared) -> String {
    let mut s = String::new();
    let line = |name: &str, st: &temper_data::Stats| {
        format!(
            "{name}: {} rows read, {} skipped, {} sequences, {} tokens ({} trained, {:.1}%) -> {} rows of <= {} tokens, packing efficiency {:.1}%{}\n",
            st.rows_read,
            st.skipped,
            st.sequences,
            st.tokens,
            st.trained_tokens,
            100.0 * st.trained_tokens as f64 / st.tokens.max(1) as f64,
            st.rows,
            cfg.max_seq_len,
            100.0 * st.packing_efficiency,
            if st.dropped_fully_masked > 0 {
                format!(", {} dropped with nothing left to train after truncation", st.dropped_fully_masked)
            } else {
                String::new()
            }
        )
    };
    for note in &p.notes {
        s.push_str(&format!("{note}\n"));
    }
    s.push_str(&line("train data", &p.train_stats));
    if !p.eval.is_empty() || p.eval_stats.rows_read > 0 {
        s.push_str(&line("eval data", &p.eval_stats));
    }
    for m in &p.skipped_examples {
        s.push_str(&format!("  skipped: {m}\n"));
    }
    s.push_str(&format!(
        "data prepared in {:.2}s ({}{})\n",
        p.seconds,
        if p.cache_hit {
            "from cache"
        } else {
            "tokenised"
        },
        p.cache_file
            .as_ref()
            .map(|f| format!(", cache {}", f.display()))
            .unwrap_or_default()
    ));
    s
}
