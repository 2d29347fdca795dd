//! Every key `temper train` reads from its YAML file (or `--key value`), with its default and
//! meaning. This table drives the help text and the unknown-key check, so the two never drift.

pub struct Key {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

pub const TRAIN_KEYS: &[Key] = &[
    Key {
        name: "model",
        default: "(required)",
        help: "Hugging Face model folder (config.json, *.safetensors, tokenizer.json)",
    },
    Key {
        name: "data",
        default: "(required)",
        help:
            "dataset file(s) or folder(s) (.jsonl, .json, .parquet): rows with `text`, `prompt`/`completion`, or `messages`",
    },
    Key {
        name: "eval_data",
        default: "(none)",
        help: "evaluation file(s) or folder(s), read like `data`",
    },
    Key {
        name: "eval_split",
        default: "0.0",
        help: "fraction of the training rows held out for evaluation when eval_data is not set",
    },
    Key {
        name: "dataset_format",
        default: "auto",
        help: "auto (text, prompt/completion, messages, sharegpt from/value) | alpaca | sharegpt",
    },
    Key {
        name: "chat_template",
        default: "(the tokenizer's)",
        help: "chatml, a .jinja file, or Jinja source: replaces the tokenizer's chat template",
    },
    Key {
        name: "completion_only_loss",
        default: "true",
        help: "train only the completion of prompt/completion rows (as TRL)",
    },
    Key {
        name: "assistant_only_loss",
        default: "false",
        help: "train only assistant turns of conversations (as TRL; false trains every token)",
    },
    Key {
        name: "assistant_masks",
        default: "auto",
        help: "auto: generation when the template has {% generation %} blocks, else prefix (said in one line) | generation: from those blocks (else an error, as TRL) | prefix: by rendering prefixes",
    },
    Key {
        name: "packing_strategy",
        default: "bfd",
        help: "bfd: truncate samples longer than max_seq_len | bfd_split: split them into pieces",
    },
    Key {
        name: "skip_bad_rows",
        default: "false",
        help: "skip and count malformed rows instead of stopping at the first",
    },
    Key {
        name: "dataset_cache_dir",
        default: "~/.cache/temper/data",
        help: "where tokenised datasets are cached (keyed by data, tokenizer, template, settings); none = off",
    },
    Key {
        name: "output_dir",
        default: "output",
        help: "where the adapter, checkpoints and metrics.jsonl are written; a fresh run refuses a non-empty one",
    },
    Key {
        name: "overwrite_output_dir",
        default: "false",
        help: "let a fresh run use a non-empty output_dir: its checkpoints, adapter and metrics.jsonl are removed first",
    },
    Key {
        name: "resume_changed",
        default: "false",
        help: "with --resume: continue even when the data, base model or optimizer settings differ from the checkpoint's (printed)",
    },
    Key {
        name: "device",
        default: "auto",
        help: "auto | cpu | cuda",
    },
    Key {
        name: "dtype",
        default: "auto",
        help: "storage of activations and frozen weights on the GPU: auto (bfloat16 from Ampere on, float16 with dynamic loss scaling before) | bfloat16 | float16 | float32; LoRA weights, gradients and optimizer state stay float32",
    },
    Key {
        name: "load_in_4bit",
        default: "false",
        help: "QLoRA: quantise the frozen linear layers to 4 bits while loading (bitsandbytes-compatible); a folder saved in 4 bits loads that way anyway",
    },
    Key {
        name: "bnb_4bit_quant_type",
        default: "nf4",
        help: "nf4 | fp4",
    },
    Key {
        name: "bnb_4bit_use_double_quant",
        default: "false",
        help: "quantise the 4-bit block scales too (saves about 0.37 bits per weight)",
    },
    Key {
        name: "bnb_4bit_compute_dtype",
        default: "none",
        help: "bfloat16 | float16: the dtype the GEMMs run in (sets dtype when dtype is auto)",
    },
    Key {
        name: "load_in_8bit",
        default: "false",
        help: "quantise the frozen linear layers to 8 bits while loading (bitsandbytes' LLM.int8 row-wise layout: an int8 per weight and an f32 scale per row), dequantised for each GEMM; a folder saved in 8 bits loads that way anyway; not with load_in_4bit",
    },
    Key {
        name: "llm_int8_threshold",
        default: "6.0",
        help: "accepted for bitsandbytes configs and has no effect: LLM.int8 computes the activation columns above it in 16 bits and the rest in int8, while temper dequantises the 8-bit weights and computes every column in 16 bits",
    },
    Key {
        name: "init_adapter",
        default: "(none)",
        help: "a PEFT adapter folder to start training from (its weights; lora_r, lora_alpha, use_rslora, target_modules and lora_dropout default to its values, and those given must agree); --resume continues a run instead",
    },
    Key {
        name: "lora_r",
        default: "16 (or init_adapter's)",
        help: "LoRA rank",
    },
    Key {
        name: "lora_alpha",
        default: "32 (or init_adapter's)",
        help: "LoRA alpha; the update is scaled by alpha/r (alpha/sqrt(r) with use_rslora)",
    },
    Key {
        name: "lora_dropout",
        default: "0.05 (or init_adapter's)",
        help: "dropout on the LoRA input while training",
    },
    Key {
        name: "use_rslora",
        default: "false (or init_adapter's)",
        help: "rank-stabilised scaling alpha/sqrt(r)",
    },
    Key {
        name: "target_modules",
        default: "all-linear (or init_adapter's)",
        help:
            "list of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (Phi-3: qkv_proj, gate_up_proj), or all-linear",
    },
    Key {
        name: "learning_rate",
        default: "2e-4",
        help: "peak learning rate",
    },
    Key {
        name: "lr_scheduler_type",
        default: "linear",
        help: "constant | linear | cosine (all with linear warmup)",
    },
    Key {
        name: "warmup_steps",
        default: "(from warmup_ratio)",
        help: "optimizer steps of linear warmup",
    },
    Key {
        name: "warmup_ratio",
        default: "0.0",
        help: "warmup as a fraction of all steps, when warmup_steps is not set",
    },
    Key {
        name: "num_train_epochs",
        default: "1",
        help: "passes over the data (fractions allowed), unless max_steps is set",
    },
    Key {
        name: "max_steps",
        default: "(from epochs)",
        help: "optimizer steps to take; overrides num_train_epochs",
    },
    Key {
        name: "per_device_train_batch_size",
        default: "4",
        help: "packed rows per micro-batch",
    },
    Key {
        name: "gradient_accumulation_steps",
        default: "1",
        help: "micro-batches per optimizer step",
    },
    Key {
        name: "max_seq_len",
        default: "1024",
        help: "tokens per packed row; longer samples are truncated",
    },
    Key {
        name: "rope_scaling",
        default: "(config.json's)",
        help: "extend the context past max_position_embeddings: linear | dynamic | yarn | llama3 (factor = max_seq_len / max_position_embeddings), or a mapping as config.json writes it ({rope_type: yarn, factor: 4, ...})",
    },
    Key {
        name: "packing",
        default: "true",
        help: "pack several samples into each row (they never attend to each other)",
    },
    Key {
        name: "seed",
        default: "42",
        help: "seeds LoRA initialisation, data order and dropout",
    },
    Key {
        name: "weight_decay",
        default: "0.0",
        help: "AdamW decoupled weight decay",
    },
    Key {
        name: "optim",
        default: "adamw_torch",
        help: "adamw_torch (moments on the device) | paged_adamw_32bit (moments in pinned host memory that the GPU updates in place: no optimizer state in device memory) | adamw_8bit (bitsandbytes' 8-bit blockwise moments on the device; tensors under 4096 elements keep f32 moments) | paged_adamw_8bit (the 8-bit moments in pinned host memory)",
    },
    Key {
        name: "adam_beta1",
        default: "0.9",
        help: "AdamW beta1",
    },
    Key {
        name: "adam_beta2",
        default: "0.999",
        help: "AdamW beta2",
    },
    Key {
        name: "adam_epsilon",
        default: "1e-8",
        help: "AdamW epsilon",
    },
    Key {
        name: "max_grad_norm",
        default: "1.0",
        help: "clip the global gradient norm to this (0 = no clipping)",
    },
    Key {
        name: "gradient_checkpointing",
        default: "true",
        help: "keep only each layer's input and recompute the layer in backward",
    },
    Key {
        name: "checkpoint_offload",
        default: "false",
        help: "with gradient_checkpointing, keep the layer inputs in pinned host memory instead of on the GPU (less device memory, two copies over PCIe per layer and step)",
    },
    Key {
        name: "save_steps",
        default: "0",
        help: "write a checkpoint every N optimizer steps (0 = only at the end)",
    },
    Key {
        name: "max_memory",
        default: "(no limit)",
        help: "refuse to start when the predicted peak memory is above this, e.g. 22GiB (see temper plan)",
    },
    Key {
        name: "dist_backend",
        default: "auto",
        help: "with several ranks: nccl (GPU) | tcp (through rank 0; any device) | auto (nccl on cuda, tcp on cpu)",
    },
    Key {
        name: "dist_timeout",
        default: "300",
        help: "seconds a rank waits for the others (rendezvous, each exchange) before failing",
    },
    Key {
        name: "logging_steps",
        default: "1",
        help: "print a log line every N steps when not on a terminal",
    },
    Key {
        name: "eval_strategy",
        default: "no (steps when eval_steps is set)",
        help: "evaluate on eval_data / eval_split during training: no | steps | epoch",
    },
    Key {
        name: "eval_steps",
        default: "(logging_steps)",
        help: "with eval_strategy steps: evaluate every N optimizer steps",
    },
    Key {
        name: "load_best_model_at_end",
        default: "false",
        help: "write the adapter of the evaluation with the lowest eval loss at the end (a checkpoint is saved at every evaluation)",
    },
    Key {
        name: "metric_for_best_model",
        default: "eval_loss",
        help: "the metric of load_best_model_at_end and early stopping: eval_loss (lower is better)",
    },
    Key {
        name: "early_stopping_patience",
        default: "(none)",
        help: "stop after N evaluations in a row without a lower eval loss",
    },
    Key {
        name: "save_total_limit",
        default: "(none)",
        help: "keep only the newest N checkpoints (and the best one with load_best_model_at_end)",
    },
    Key {
        name: "report_to",
        default: "none",
        help: "none | tensorboard: TensorBoard event files in output_dir/runs (loss, lr, grad_norm, tokens/s, eval_loss, memory)",
    },
];

/// The help text listing every key.
pub fn train_keys_help() -> String {
    let mut s = String::from(
        "CONFIG KEYS (YAML file or --key value; paths are relative to the YAML file's folder):\n",
    );
    for k in TRAIN_KEYS {
        s.push_str(&format!(
            "  {:<29} {}  [default: {}]\n",
            k.name, k.help, k.default
        ));
    }
    s
}

/// The known key nearest to `unknown`, for "did you mean" messages.
pub fn suggest(unknown: &str) -> Option<&'static str> {
    TRAIN_KEYS
        .iter()
        .map(|k| (edit_distance(unknown, k.name), k.name))
        .filter(|(d, name)| *d <= 3.max(name.len() / 3))
        .min()
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
