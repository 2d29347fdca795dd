//! `temper`: LoRA fine-tuning of Llama-family models in one binary.

mod axolotl;
mod commands;
mod config;
mod dataset;
mod device;
mod dist;
mod interrupt;
mod keys;
mod launch;
mod model_source;
mod output_dir;
mod plot;
mod progress;
mod run_files;
mod tensorboard;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "temper",
    version,
    about = "LoRA fine-tuning of Llama-family models, in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a LoRA adapter (supervised fine-tuning). Writes a PEFT adapter to output_dir.
    #[command(after_long_help = keys::train_keys_help(), after_help = "Run `temper train --help` to list every config key.")]
    Train {
        /// YAML file of config keys.
        config: Option<PathBuf>,
        /// Continue from the newest checkpoint in output_dir, or from the folder given.
        #[arg(long, num_args = 0..=1, default_missing_value = "")]
        resume: Option<String>,
        /// Device: auto | cpu | cuda (overrides the `device` key).
        #[arg(long)]
        device: Option<String>,
        /// How to read CONFIG: temper (its keys), axolotl (an axolotl YAML: the keys the two
        /// share are mapped, the others refused by name) or auto (axolotl's when the file
        /// has `base_model` or `datasets`).
        #[arg(long, value_name = "FORMAT")]
        config_format: Option<String>,
        /// Start N ranks on this host (data parallel, one GPU each), as torchrun would.
        /// Under a launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
        /// MASTER_PORT, leave it out: each process runs as the rank it is told.
        #[arg(long, value_name = "N")]
        nproc_per_node: Option<usize>,
        /// Any config key as `--key value`, e.g. `--max_steps 100 --learning_rate 1e-4`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "--KEY VALUE"
        )]
        overrides: Vec<String>,
    },
    /// Run the data pipeline alone: summary, examples with trained tokens highlighted, rows.
    #[command(after_help = "Config keys as for `temper train`; `temper train --help` lists them.")]
    Preprocess {
        /// YAML file of config keys (as for `temper train`).
        config: PathBuf,
        /// Print this many examples with trained tokens highlighted (colour on a terminal,
        /// [[brackets]] otherwise).
        #[arg(long, default_value_t = 0)]
        show: usize,
        /// Write every processed row as {"input_ids", "labels", "position_ids"} JSON lines.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Any config key as `--key value`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "--KEY VALUE"
        )]
        overrides: Vec<String>,
    },
    /// Mean loss of a model (and adapter) over a dataset, and each row's loss. Given the
    /// training config, rows are read, rendered and masked exactly as training does.
    #[command(
        after_help = "With a training config: the data is --data, else the config's eval_data (or eval_split); the adapter is --adapter, else the one in output_dir (`--adapter none`: the base)."
    )]
    Eval {
        /// The training config (YAML): its model, template, dataset_format, masks and
        /// max_seq_len are used.
        config: Option<PathBuf>,
        /// The training config, as a flag.
        #[arg(long = "config", value_name = "CONFIG", conflicts_with = "config")]
        config_flag: Option<PathBuf>,
        /// A model folder (or .gguf); with a config, replaces its `model`.
        #[arg(long)]
        model: Option<PathBuf>,
        /// A PEFT adapter folder (written by temper or by PEFT), or `none`.
        #[arg(long)]
        adapter: Option<PathBuf>,
        /// A dataset file or folder (.jsonl, .json, .parquet).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print {"mean_loss": .., "rows": [{"loss": .., "tokens": ..}, ..]} for scripts.
        #[arg(long)]
        json: bool,
        /// Truncate rows to this many tokens (with a config: replaces its max_seq_len).
        #[arg(long)]
        max_seq_len: Option<usize>,
        /// auto | cpu | cuda (default: the config's `device`, else auto).
        #[arg(long)]
        device: Option<String>,
        /// Storage of activations and weights on the GPU: auto | bfloat16 | float16 | float32.
        #[arg(long)]
        dtype: Option<String>,
    },
    /// Generate text from a model (and adapter) with a KV cache, streaming it to stdout.
    Generate(commands::generate::GenerateArgs),
    /// Convert a llama.cpp GGUF file (llama, qwen2, qwen3, phi3, gemma, gemma2, gemma3) to a Hugging Face model folder.
    ImportGguf {
        /// The .gguf file.
        gguf: PathBuf,
        /// The folder to write (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// Weights dtype: bfloat16 | float16 | float32.
        #[arg(long, default_value = "bfloat16")]
        dtype: String,
        /// Write into --out even when it holds files (those with the same names are replaced).
        #[arg(long)]
        force: bool,
    },
    /// Predicted peak memory of a training run, from config.json and the settings alone.
    Plan {
        /// Print the longest max_seq_len that fits (device memory: max_memory, or the GPU's
        /// free memory; host memory for offloaded layer inputs) instead of the configured one.
        #[arg(long)]
        longest: bool,
        /// YAML file of config keys (as for `temper train`).
        config: PathBuf,
        /// Any config key as `--key value`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "--KEY VALUE"
        )]
        overrides: Vec<String>,
    },
    /// Redraw a run's loss picture (RUN_DIR/loss.svg: train and eval loss by step, learning
    /// rate on the right axis) from its metrics.jsonl.
    Plot {
        /// The output_dir of a `temper train` run.
        run_dir: PathBuf,
    },
    /// Write a random-weight Hugging Face model folder of a named shape (for benchmarks).
    InitModel {
        /// tiny | llama2-7b | llama3-8b | qwen3-8b | qwen3-tiny | phi3-mini | phi3-tiny | gemma-7b |
        /// gemma-tiny | gemma2-9b | gemma2-tiny | gemma3-1b | gemma3-tiny
        #[arg(long)]
        shape: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write into --out even when it holds files (those with the same names are replaced).
        #[arg(long)]
        force: bool,
    },
    /// Fold a LoRA adapter into its base model: a Hugging Face folder that transformers and
    /// vLLM load with no adapter.
    Merge(commands::merge::MergeArgs),
    /// Write a model (with its adapter merged in) as a GGUF file for llama.cpp, or the adapter
    /// alone as llama.cpp's LoRA GGUF (--lora-only).
    ExportGguf(commands::export_gguf::ExportGgufArgs),
    /// Quantise a model folder to 4 bits (NF4 / FP4) in bitsandbytes' layout, for QLoRA.
    Quantize(commands::quantize::QuantizeArgs),
    /// Time LoRA training steps on random tokens (all 7 linear kinds); prints one JSON line.
    Bench {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 1024)]
        seq: usize,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 16)]
        lora_r: usize,
        /// Keep every activation instead of recomputing each layer in backward.
        #[arg(long)]
        no_checkpointing: bool,
        /// Keep the checkpointed layer inputs in pinned host memory.
        #[arg(long)]
        checkpoint_offload: bool,
        /// Quantise the frozen linear layers to 4 bits on load: nf4 | fp4.
        #[arg(long)]
        load_in_4bit: Option<String>,
        /// With --load-in-4bit: quantise the block scales too.
        #[arg(long)]
        double_quant: bool,
        /// Quantise the frozen linear layers to 8 bits on load (LLM.int8 row-wise).
        #[arg(long, conflicts_with = "load_in_4bit")]
        load_in_8bit: bool,
        /// AdamW moments in host memory (as paged_adamw_32bit).
        #[arg(long)]
        paged_optimizer: bool,
        #[arg(long, default_value = "auto")]
        device: String,
        /// Storage of activations and weights on the GPU: auto | bfloat16 | float16 | float32.
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Time every op on the device (CUDA events) and print where each step's time goes.
        #[arg(long)]
        profile: bool,
    },
}

/// Config keys that may be given on the command line without a value.
const FLAGS: &[&str] = &["overwrite_output_dir", "resume_changed"];

/// `--key value` pairs from the trailing arguments. `--resume [DIR]` may stand among them.
fn parse_overrides(args: &[String], resume: &mut Option<String>) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let Some(key) = a.strip_prefix("--") else {
            bail!("unexpected argument `{a}`: config keys are given as `--key value`");
        };
        if key == "resume" {
            let dir = it.next_if(|v| !v.starts_with("--")).cloned();
            *resume = Some(dir.unwrap_or_default());
            continue;
        }
        let (key, value) = match key.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            // Switches: `--overwrite_output_dir` alone means true.
            None if FLAGS.contains(&key.replace('-', "_").as_str())
                && it.peek().is_none_or(|v| v.starts_with("--")) =>
            {
                (key.to_string(), "true".to_string())
            }
            None => match it.next() {
                Some(v) => (key.to_string(), v.clone()),
                None => bail!("`--{key}` needs a value"),
            },
        };
        out.push((key.replace('-', "_"), value));
    }
    Ok(out)
}

/// `--resume` takes an optional folder, so the parser gives it whatever follows: in
/// `--resume --max_steps 24` that is the next key, put back among the keys here.
fn untangle_resume(
    resume: Option<String>,
    mut overrides: Vec<String>,
) -> (Option<String>, Vec<String>) {
    match resume {
        Some(v) if v.starts_with('-') => {
            overrides.insert(0, v);
            (Some(String::new()), overrides)
        }
        other => (other, overrides),
    }
}

/// `temper train --resume CONFIG.yaml ...`: the config is not the checkpoint folder to
/// resume from (that is never a .yaml file): it is moved before `--resume`, where the parser
/// takes it as the config.
fn config_before_resume(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if args.get(1).is_some_and(|a| a == "train") {
        let is_yaml = |a: &std::ffi::OsString| {
            let a = a.to_string_lossy().to_ascii_lowercase();
            a.ends_with(".yaml") || a.ends_with(".yml")
        };
        if let Some(i) = args.iter().position(|a| a == "--resume") {
            if args.get(i + 1).is_some_and(is_yaml) {
                args.swap(i, i + 1);
            }
        }
    }
    args
}

/// `--nproc-per-node N` given after the config keys lands among them: take it out.
fn take_nproc(overrides: &mut Vec<(String, String)>, nproc: &mut Option<usize>) -> Result<()> {
    if let Some(i) = overrides.iter().position(|(k, _)| k == "nproc_per_node") {
        let (_, v) = overrides.remove(i);
        *nproc = Some(
            v.parse()
                .map_err(|_| anyhow::anyhow!("--nproc-per-node `{v}` is not a number of ranks"))?,
        );
    }
    Ok(())
}

/// Exits 1 after printing the error and its causes, as anyhow prints them but without the
/// backtrace that `RUST_BACKTRACE=1` would add: an error is the user's input or environment,
/// not a bug (panics keep their backtrace).
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// "Error: outer" and, when there are causes, "Caused by:" with each one numbered.
fn error_report(e: &anyhow::Error) -> String {
    let mut s = format!("Error: {e}");
    let causes: Vec<String> = e.chain().skip(1).map(|c| c.to_string()).collect();
    match causes.as_slice() {
        [] => {}
        [one] => s.push_str(&format!("\n\nCaused by:\n    {one}")),
        many => {
            s.push_str("\n\nCaused by:");
            for (i, c) in many.iter().enumerate() {
                s.push_str(&format!("\n    {i}: {c}"));
            }
        }
    }
    s
}

fn run() -> Result<()> {
    let cli = Cli::parse_from(config_before_resume(std::env::args_os().collect()));
    match cli.command {
        Command::Plan {
            longest,
            config,
            overrides,
        } => {
            let mut resume = None;
            let overrides = parse_overrides(&overrides, &mut resume)?;
            commands::plan::run(commands::plan::PlanArgs {
                config,
                overrides,
                longest,
            })
        }
        Command::InitModel {
            shape,
            out,
            seed,
            force,
        } => {
            output_dir::check_out(&out, force)?;
            commands::init_model::run(commands::init_model::InitModelArgs { shape, out, seed })
        }
        Command::Bench {
            model,
            seq,
            batch,
            steps,
            lora_r,
            no_checkpointing,
            checkpoint_offload,
            load_in_4bit,
            double_quant,
            load_in_8bit,
            paged_optimizer,
            device,
            dtype,
            profile,
        } => commands::bench::run(commands::bench::BenchArgs {
            offload: checkpoint_offload,
            load: temper_model::LoadOptions {
                quantize: match load_in_4bit {
                    Some(t) => Some(temper_model::QuantizeOnLoad {
                        quant_type: temper_model::QuantType::parse(&t).ok_or_else(|| {
                            anyhow::anyhow!("--load-in-4bit `{t}`: use nf4 or fp4")
                        })?,
                        blocksize: 64,
                        double_quant,
                    }),
                    None => None,
                },
                int8: load_in_8bit,
            },
            moments_on_host: paged_optimizer,
            model,
            seq,
            batch,
            steps,
            lora_r,
            checkpointing: !no_checkpointing,
            device,
            dtype,
            profile,
        }),
        Command::Train {
            config,
            resume,
            device,
            config_format,
            nproc_per_node,
            overrides,
        } => {
            let (resume, overrides) = untangle_resume(resume, overrides);
            let mut resume = resume;
            let mut overrides = parse_overrides(&overrides, &mut resume)?;
            let mut nproc = nproc_per_node;
            take_nproc(&mut overrides, &mut nproc)?;
            if let Some(n) = nproc {
                let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                return launch::run(n, &launch::rank_args(&args));
            }
            if let Some(d) = device {
                overrides.push(("device".into(), d));
            }
            if let Some(f) = config_format {
                overrides.push(("config_format".into(), f));
            }
            let resume = resume.map(|r| {
                if r.is_empty() {
                    None
                } else {
                    Some(PathBuf::from(r))
                }
            });
            commands::train::run(commands::train::TrainArgs {
                config,
                overrides,
                resume,
            })
        }
        Command::Preprocess {
            config,
            show,
            out,
            overrides,
        } => {
            let mut resume = None;
            let overrides = parse_overrides(&overrides, &mut resume)?;
            commands::preprocess::run(commands::preprocess::PreprocessArgs {
                config,
                show,
                out,
                overrides,
            })
        }
        Command::Eval {
            config,
            config_flag,
            model,
            adapter,
            data,
            json,
            max_seq_len,
            device,
            dtype,
        } => commands::eval::run(commands::eval::EvalArgs {
            config: config.or(config_flag),
            model,
            adapter,
            data,
            json,
            device,
            dtype,
            max_seq_len,
        }),
        Command::Generate(args) => commands::generate::run(args),
        Command::Plot { run_dir } => {
            let out = plot::redraw(&run_dir)?;
            println!("{}", out.display());
            Ok(())
        }
        Command::Quantize(args) => commands::quantize::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::ExportGguf(args) => commands::export_gguf::run(args),
        Command::ImportGguf {
            gguf,
            out,
            dtype,
            force,
        } => {
            output_dir::check_out(&out, force)?;
            commands::import_gguf::run(commands::import_gguf::ImportGgufArgs { gguf, out, dtype })
        }
    }
}
