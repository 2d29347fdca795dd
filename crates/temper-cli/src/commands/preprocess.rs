//! `temper preprocess CONFIG.yaml [--show N] [--out FILE.jsonl] [--key value ...]`: the data
//! pipeline alone, to check masks before training.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use temper_data::{Example, Tokenizer, IGNORE_INDEX};

use crate::config;
use crate::dataset::prepare;

pub struct PreprocessArgs {
    pub config: PathBuf,
    pub show: usize,
    pub out: Option<PathBuf>,
    pub overrides: Vec<(String, String)>,
}

pub fn run(args: PreprocessArgs) -> Result<()> {
    let (file, base) = config::load(Some(&args.config), &args.overrides)?;
    let plan = file.resolve(&base, None)?;
    let tok = Tokenizer::from_dir(&plan.model_dir)?;
    let data = prepare(&tok, &plan.data, plan.max_seq_len, plan.packing)?;
    let color = std::io::stdout().is_terminal();
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    for (i, ex) in data.inner.train_examples.iter().take(args.show).enumerate() {
        writeln!(
            w,
            "--- example {i}: {} tokens, {} trained {}",
            ex.input_ids.len(),
            ex.trained(),
            if color {
                "(trained in green)"
            } else {
                "(trained in [[brackets]])"
            }
        )?;
        writeln!(w, "{}", highlight(&tok, ex, color)?)?;
    }
    if let Some(out) = &args.out {
        let f =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut f = BufWriter::new(f);
        for r in &data.rows {
            let line = serde_json::json!({
                "input_ids": r.input_ids,
                "labels": r.labels,
                "position_ids": r.position_ids,
            });
            writeln!(f, "{line}")?;
        }
        f.flush()?;
        eprintln!("wrote {} rows to {}", data.rows.len(), out.display());
    }
    Ok(())
}

/// The example's text with trained runs in green (terminal) or in [[brackets]].
pub fn highlight(tok: &Tokenizer, ex: &Example, color: bool) -> Result<String> {
    let mut s = String::new();
    let mut start = 0;
    while start < ex.input_ids.len() {
        let trained = ex.labels[start] != IGNORE_INDEX;
        let mut end = start + 1;
        while end < ex.input_ids.len() && (ex.labels[end] != IGNORE_INDEX) == trained {
            end += 1;
        }
        let text = tok.decode(&ex.input_ids[start..end], false)?;
        match (trained, color) {
            (false, _) => s.push_str(&text),
            (true, true) => s.push_str(&format!("\x1b[1;32m{text}\x1b[0m")),
            (true, false) => s.push_str(&format!("[[{text}]]")),
        }
        start = end;
    }
    Ok(s)
}
