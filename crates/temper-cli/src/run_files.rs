//! What `temper train` leaves beside the adapter so that the folder describes itself, as PEFT
//! and TRL folders do: `training_config.yaml` (every setting as used), the tokenizer files and
//! the chat template trained with, a `README.md` model card, and `loss.svg`.

use std::path::Path;

use anyhow::{Context, Result};
use temper_data::{TemplateChoice, Tokenizer};
use temper_train::TrainSummary;

use crate::config::TrainPlan;

/// Tokenizer files copied from the model folder when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// Writes every file; a failure is a warning (the adapter is already saved).
pub fn write_all(plan: &TrainPlan, tok: &Tokenizer, summary: &TrainSummary, eval: Option<f64>) {
    let out = &plan.settings.output_dir;
    type Step<'a> = (&'a str, Box<dyn Fn() -> Result<()> + 'a>);
    let steps: [Step; 4] = [
        (
            "training_config.yaml",
            Box::new(|| write(out, "training_config.yaml", &plan.resolved_yaml)),
        ),
        ("tokenizer files", Box::new(|| tokenizer_files(plan, tok))),
        (
            "README.md",
            Box::new(|| write(out, "README.md", &model_card(plan, summary, eval))),
        ),
        (
            crate::plot::FILE,
            Box::new(|| crate::plot::redraw(out).map(|_| ())),
        ),
    ];
    for (what, f) in steps {
        if let Err(e) = f() {
            eprintln!("warning: {what} not written in {}: {e:#}", out.display());
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
}

/// The tokenizer files of the model, and `chat_template.jinja`: the template the data was
/// rendered with (transformers reads it in preference to tokenizer_config.json's).
fn tokenizer_files(plan: &TrainPlan, tok: &Tokenizer) -> Result<()> {
    let out = &plan.settings.output_dir;
    for name in TOKENIZER_FILES {
        let src = plan.model_dir.join(name);
        if src.is_file() {
            let dst = out.join(name);
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    let template = match &plan.data.template {
        TemplateChoice::Tokenizer => tok.chat_template().map(|t| t.source().to_string()),
        TemplateChoice::ChatMl => Some(temper_data::CHATML_TEMPLATE.to_string()),
        TemplateChoice::Source(s) => Some(s.clone()),
    };
    if let Some(t) = template {
        write(out, "chat_template.jinja", &t)?;
    }
    Ok(())
}

fn fmt_loss(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map_or_else(|| "-".to_string(), |x| format!("{x:.4}"))
}

/// A model card in the shape PEFT and TRL write (YAML front matter, then prose).
pub fn model_card(plan: &TrainPlan, summary: &TrainSummary, eval: Option<f64>) -> String {
    let s = &plan.settings;
    let base = &s.base_model;
    let targets: Vec<&str> = s.lora.targets.iter().map(|t| t.name()).collect();
    let data: Vec<String> = plan
        .data
        .train
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect();
    let eval_data: Vec<String> = plan
        .data
        .eval
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect();
    let out = s.output_dir.display();
    let mut card = format!(
        "---\nbase_model: {base}\nlibrary_name: peft\npipeline_tag: text-generation\ntags:\n- temper\n- lora\n- sft\n---\n\n\
         # LoRA adapter for {base}\n\n\
         Trained with temper (supervised fine-tuning, LoRA{}).\n\n\
         ## Training\n\n\
         - base model: `{base}` (given as `{}`)\n\
         - data: {}{}\n\
         - LoRA: r {}, alpha {}, dropout {}, {}, on {}\n\
         - learning rate {} ({:?} schedule), {} optimizer steps of {} rows x {} accumulation, max_seq_len {}\n\
         - train loss: {} at the first step, {} at the last\n",
        if plan.load.quantize.is_some() { ", 4-bit base (QLoRA)" } else { "" },
        plan.model_name,
        data.join(", "),
        if eval_data.is_empty() {
            String::new()
        } else {
            format!("; eval data: {}", eval_data.join(", "))
        },
        s.lora.r,
        s.lora.alpha,
        s.lora.dropout,
        if s.lora.use_rslora { "rsLoRA" } else { "alpha/r scaling" },
        targets.join(", "),
        s.learning_rate,
        s.schedule,
        summary.start_step + summary.steps,
        s.micro_batch_size,
        s.grad_accum,
        plan.max_seq_len,
        fmt_loss(summary.first_loss),
        fmt_loss(summary.last_loss),
    );
    if let Some(e) = eval {
        card.push_str(&format!("- eval loss at the end: {}\n", fmt_loss(Some(e))));
    }
    if let Some((step, loss)) = summary.best {
        card.push_str(&format!(
            "- best eval loss: {} at step {step}\n",
            fmt_loss(Some(loss))
        ));
    }
    if summary.early_stopped {
        card.push_str("- stopped early (early_stopping_patience)\n");
    }
    card.push_str(&format!(
        "\nEvery setting is in `training_config.yaml`; per-step metrics in `metrics.jsonl`, \
         drawn in `loss.svg`.\n\n\
         ## Use it\n\n\
         With PEFT:\n\n\
         ```python\n\
         from peft import AutoPeftModelForCausalLM\n\
         from transformers import AutoTokenizer\n\n\
         model = AutoPeftModelForCausalLM.from_pretrained(\"{out}\")\n\
         tokenizer = AutoTokenizer.from_pretrained(\"{out}\")\n\
         ```\n\n\
         With temper:\n\n\
         ```sh\n\
         temper generate --model {model} --adapter {out} --chat --prompt \"...\"\n\
         temper eval {out}/training_config.yaml\n\
         temper merge --model {model} --adapter {out} --out merged\n\
         ```\n",
        model = plan.model_dir.display()
    ));
    card
}
