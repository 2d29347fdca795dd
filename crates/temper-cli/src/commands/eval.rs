//! `temper eval CONFIG.yaml [--adapter DIR] [--data FILE]`, or
//! `temper eval --model DIR [--adapter DIR] --data FILE.jsonl`: each row's mean loss and the
//! token-weighted mean over all rows.
//!
//! With a training config, rows are read and masked exactly as training reads them: the same
//! `dataset_format`, chat template, `completion_only_loss` / `assistant_only_loss` masks and
//! `max_seq_len` (text rows get their EOS, as in training), and the model loads as training
//! loads it (4-bit / 8-bit, `rope_scaling`). The data is `--data`, else the config's
//! `eval_data` (or its `eval_split` of the training rows); the adapter is `--adapter`, else the
//! one in the config's `output_dir` when there is one (`--adapter none` scores the base).
//!
//! Without a config, a `text` row is tokenised as tokenizer.json alone does it, nothing
//! appended, and every next token counts: what transformers computes with `labels=input_ids`.
//! Chat and prompt/completion rows are rendered and masked with the model's template,
//! assistant turns only.
//!
//! The scoring is temper-train's ([`temper_train::row_losses`]); this file picks the rows,
//! the model and the adapter, and prints.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use temper_core::{Backend, CpuBackend};
use temper_data::{read_jsonl, tokenize_row, unpacked, PackedRow, Row, TokenizeOptions, Tokenizer};
use temper_model::{adapter, Model};

use crate::config::{self, TrainPlan};
use crate::device::{self, DeviceChoice};

pub struct EvalArgs {
    /// The training config, when given.
    pub config: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub adapter: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub json: bool,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub max_seq_len: Option<usize>,
}

/// What to score and how to load it, from the config or the flags.
struct Job {
    model: PathBuf,
    adapter: Option<PathBuf>,
    plan: Option<TrainPlan>,
    device: String,
    dtype: String,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let job = match &args.config {
        Some(cfg) => from_config(cfg, &args)?,
        None => {
            let model = args.model.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "give the training config (`temper eval CONFIG.yaml`) or --model DIR --data FILE"
                )
            })?;
            Job {
                model: crate::model_source::resolve(&model)?,
                adapter: args.adapter.clone().filter(|a| a != Path::new("none")),
                plan: None,
                device: args.device.clone().unwrap_or_else(|| "auto".into()),
                dtype: args.dtype.clone().unwrap_or_else(|| "auto".into()),
            }
        }
    };
    match device::resolve(&job.device, &job.dtype)? {
        DeviceChoice::Cpu => run_on(Arc::new(CpuBackend::new()), job, &args),
        DeviceChoice::Cuda(be) => run_on(be, job, &args),
    }
}

/// The job a training config describes, with the command line's flags over it.
fn from_config(path: &Path, args: &EvalArgs) -> Result<Job> {
    let mut overrides = Vec::new();
    if let Some(n) = args.max_seq_len {
        overrides.push(("max_seq_len".to_string(), n.to_string()));
    }
    let (file, base) = config::load(Some(path), &overrides)?;
    let mut plan = file.resolve(&base, None)?;
    if let Some(m) = &args.model {
        plan.model_dir = m.clone();
    }
    plan.model_dir = crate::model_source::resolve(&plan.model_dir)?;
    let adapter = match &args.adapter {
        Some(a) if a == Path::new("none") => None,
        Some(a) => Some(a.clone()),
        None => {
            let out = &plan.settings.output_dir;
            if out.join("adapter_config.json").exists() {
                eprintln!("adapter: {} (the config's output_dir)", out.display());
                Some(out.clone())
            } else {
                eprintln!(
                    "adapter: none ({} holds no adapter yet); scoring the base model",
                    out.display()
                );
                None
            }
        }
    };
    Ok(Job {
        model: plan.model_dir.clone(),
        adapter,
        device: args.device.clone().unwrap_or_else(|| plan.device.clone()),
        dtype: args.dtype.clone().unwrap_or_else(|| plan.dtype.clone()),
        plan: Some(plan),
    })
}

fn run_on<B: Backend>(be: Arc<B>, job: Job, args: &EvalArgs) -> Result<()> {
    let model = match &job.plan {
        Some(plan) => crate::commands::train::load_model(be.clone(), plan)?,
        None => Model::load(be.clone(), &job.model)
            .with_context(|| format!("loading model {}", job.model.display()))?,
    };
    let tok = Tokenizer::from_dir(&job.model)?;
    let lora = match &job.adapter {
        Some(dir) => Some(
            adapter::load(&*be, &model.cfg, dir)
                .with_context(|| format!("loading adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let seqs = match &job.plan {
        Some(plan) => rows_as_trained(&tok, plan, args.data.as_deref())?,
        None => {
            let data = args.data.as_deref().ok_or_else(|| {
                anyhow::anyhow!("--data FILE is needed with --model (or give the training config)")
            })?;
            rows_as_given(&tok, data, args.max_seq_len)?
        }
    };
    let report = temper_train::row_losses(&model, lora.as_ref(), &seqs)?;
    let total_tokens: usize = report.rows.iter().map(|r| r.tokens).sum();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for (i, r) in report.rows.iter().enumerate() {
            println!("row {i}: loss {:.6} over {} tokens", r.loss, r.tokens);
        }
        println!(
            "mean loss {:.6} (perplexity {:.3}) over {} rows, {} tokens",
            report.mean_loss,
            report.mean_loss.exp(),
            report.rows.len(),
            total_tokens
        );
    }
    Ok(())
}

/// The rows of `data` (else the config's eval rows) read, rendered, masked and truncated as
/// training does, one sequence each.
fn rows_as_trained(
    tok: &Tokenizer,
    plan: &TrainPlan,
    data: Option<&Path>,
) -> Result<Vec<PackedRow>> {
    let mut cfg = plan.data.clone();
    cfg.packing = false;
    match data {
        Some(file) => {
            cfg.train = vec![file.to_path_buf()];
            cfg.eval = Vec::new();
            cfg.eval_split = 0.0;
        }
        None if !cfg.eval.is_empty() || cfg.eval_split > 0.0 => {}
        None => bail!(
            "nothing to evaluate: give --data FILE, or set eval_data (or eval_split) in the config"
        ),
    }
    let p = temper_data::prepare(tok, &cfg).context("preparing the evaluation data")?;
    for note in &p.notes {
        eprintln!("{note}");
    }
    Ok(if data.is_some() { p.train } else { p.eval })
}

/// The rows of a JSONL file without a training config (see the module comment).
fn rows_as_given(
    tok: &Tokenizer,
    data: &Path,
    max_seq_len: Option<usize>,
) -> Result<Vec<PackedRow>> {
    let rows = read_jsonl(data).with_context(|| format!("reading {}", data.display()))?;
    let mut examples = Vec::with_capacity(rows.len());
    for row in &rows {
        let opts = TokenizeOptions {
            append_eos: !matches!(row, Row::Text(_)),
            max_seq_len,
        };
        let mut ex = tokenize_row(tok, row, &opts)?;
        if matches!(row, Row::Text(_)) {
            ex.labels = ex.input_ids.iter().map(|&t| t as i32).collect();
        }
        examples.push(ex);
    }
    Ok(unpacked(&examples))
}
