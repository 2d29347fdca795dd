//! `temper eval --model DIR [--adapter DIR] --data FILE.jsonl [--json]`: each row's mean loss
//! and the token-weighted mean over all rows.
//!
//! A `text` row is tokenised as tokenizer.json alone does it, nothing appended, and every next
//! token counts: what transformers computes with `labels=input_ids`. Chat and prompt/completion
//! rows are rendered and masked as training renders them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;
use temper_core::{Backend, CpuBackend};
use temper_data::{read_jsonl, tokenize_row, unpacked, Batch, Row, TokenizeOptions, Tokenizer};
use temper_model::{adapter, Model, TokenBatch};

use crate::device::{self, DeviceChoice};

pub struct EvalArgs {
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
    pub data: PathBuf,
    pub json: bool,
    pub device: String,
    pub dtype: String,
    pub max_seq_len: Option<usize>,
}

#[derive(Serialize)]
struct RowLoss {
    loss: f64,
    tokens: usize,
}

#[derive(Serialize)]
struct Report {
    mean_loss: f64,
    rows: Vec<RowLoss>,
}

/// Tokens per forward pass when evaluating several rows together.
const EVAL_BATCH_TOKENS: usize = 4096;

pub fn run(mut args: EvalArgs) -> Result<()> {
    args.model = crate::model_source::resolve(&args.model)?;
    match device::resolve(&args.device, &args.dtype)? {
        DeviceChoice::Cpu => run_on(Arc::new(CpuBackend::new()), args),
        DeviceChoice::Cuda(be) => run_on(be, args),
    }
}

fn run_on<B: Backend>(be: Arc<B>, args: EvalArgs) -> Result<()> {
    let model = Model::load(be.clone(), &args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let tok = Tokenizer::from_dir(&args.model)?;
    let lora = match &args.adapter {
        Some(dir) => Some(
            adapter::load(&*be, &model.cfg, dir)
                .with_context(|| format!("loading adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let rows =
        read_jsonl(&args.data).with_context(|| format!("reading {}", args.data.display()))?;
    let mut examples = Vec::with_capacity(rows.len());
    for row in &rows {
        let opts = TokenizeOptions {
            append_eos: !matches!(row, Row::Text(_)),
            max_seq_len: args.max_seq_len,
        };
        let mut ex = tokenize_row(&tok, row, &opts)?;
        if matches!(row, Row::Text(_)) {
            ex.labels = ex.input_ids.iter().map(|&t| t as i32).collect();
        }
        examples.push(ex);
    }
    let seqs = unpacked(&examples);

    let mut results: Vec<RowLoss> = Vec::with_capacity(seqs.len());
    let mut start = 0;
    while start < seqs.len() {
        // Group whole rows up to EVAL_BATCH_TOKENS (a longer row goes alone).
        let mut end = start + 1;
        let mut tokens = seqs[start].len();
        while end < seqs.len() && tokens + seqs[end].len() <= EVAL_BATCH_TOKENS {
            tokens += seqs[end].len();
            end += 1;
        }
        let refs: Vec<_> = seqs[start..end].iter().collect();
        let batch = Batch::from_rows(&refs);
        let tb = TokenBatch {
            ids: &batch.input_ids,
            positions: &batch.position_ids,
            cu_seqlens: &batch.cu_seqlens,
            targets: &batch.targets,
        };
        let losses = model.token_losses(lora.as_ref(), &tb)?;
        for w in batch.cu_seqlens.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            let counted = batch.targets[a..b].iter().filter(|&&t| t >= 0).count();
            let sum: f64 = losses[a..b].iter().map(|&x| x as f64).sum();
            results.push(RowLoss {
                loss: if counted > 0 {
                    sum / counted as f64
                } else {
                    0.0
                },
                tokens: counted,
            });
        }
        start = end;
    }
    let total_tokens: usize = results.iter().map(|r| r.tokens).sum();
    let total: f64 = results.iter().map(|r| r.loss * r.tokens as f64).sum();
    let report = Report {
        mean_loss: if total_tokens > 0 {
            total / total_tokens as f64
        } else {
            f64::NAN
        },
        rows: results,
    };
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
