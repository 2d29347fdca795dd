//! `temper train`'s configuration in two steps: [`TrainFile`] mirrors the YAML file (every key
//! optional, defaults filled by serde), then [`TrainFile::resolve`] checks it and produces the
//! settings the trainer runs with. Unknown keys are errors with a suggestion.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};
use temper_model::adapter::parse_targets;
use temper_model::QuantType;
use temper_model::{Checkpointing, LoraConfig, Target};
use temper_train::{AdamWConfig, ScheduleKind, TrainSettings};

use crate::keys::{suggest, TRAIN_KEYS};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    pub model: Option<PathBuf>,
    pub data: Option<OneOrMany>,
    pub eval_data: Option<OneOrMany>,
    #[serde(default)]
    pub eval_split: f64,
    #[serde(default = "d_format")]
    pub dataset_format: String,
    pub chat_template: Option<String>,
    pub completion_only_loss: Option<bool>,
    #[serde(default)]
    pub assistant_only_loss: bool,
    #[serde(default = "d_masks")]
    pub assistant_masks: String,
    #[serde(default = "d_packing_strategy")]
    pub packing_strategy: String,
    #[serde(default)]
    pub skip_bad_rows: bool,
    pub dataset_cache_dir: Option<String>,
    #[serde(default = "d_output")]
    pub output_dir: PathBuf,
    #[serde(default)]
    pub overwrite_output_dir: bool,
    #[serde(default)]
    pub resume_changed: bool,
    #[serde(default = "d_device")]
    pub device: String,
    #[serde(default = "d_dtype")]
    pub dtype: String,
    #[serde(default)]
    pub load_in_4bit: bool,
    #[serde(default)]
    pub load_in_8bit: bool,
    /// Accepted as bitsandbytes names it; see keys.rs for why it changes nothing here.
    pub llm_int8_threshold: Option<f32>,
    #[serde(default = "d_quant_type")]
    pub bnb_4bit_quant_type: String,
    #[serde(default)]
    pub bnb_4bit_use_double_quant: bool,
    pub bnb_4bit_compute_dtype: Option<String>,
    /// A PEFT adapter to start training from. The lora keys below default to its values.
    pub init_adapter: Option<PathBuf>,
    /// The lora keys: None when the file and command line leave them out, so that they can
    /// come from `init_adapter` (else from the defaults below).
    pub lora_r: Option<usize>,
    pub lora_alpha: Option<f32>,
    pub lora_dropout: Option<f32>,
    pub use_rslora: Option<bool>,
    pub target_modules: Option<serde_json::Value>,
    #[serde(default = "d_lr")]
    pub learning_rate: f64,
    #[serde(default = "d_sched")]
    pub lr_scheduler_type: String,
    pub warmup_steps: Option<u64>,
    #[serde(default)]
    pub warmup_ratio: f64,
    #[serde(default = "d_epochs")]
    pub num_train_epochs: f64,
    pub max_steps: Option<i64>,
    #[serde(default = "d_bs")]
    pub per_device_train_batch_size: usize,
    #[serde(default = "d_one")]
    pub gradient_accumulation_steps: usize,
    #[serde(default = "d_seq")]
    pub max_seq_len: usize,
    /// A type name or a mapping as config.json's `rope_scaling` (checked when the model loads).
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "d_true")]
    pub packing: bool,
    #[serde(default = "d_seed")]
    pub seed: u64,
    #[serde(default)]
    pub weight_decay: f32,
    #[serde(default = "d_optim")]
    pub optim: String,
    #[serde(default = "d_b1")]
    pub adam_beta1: f32,
    #[serde(default = "d_b2")]
    pub adam_beta2: f32,
    #[serde(default = "d_eps")]
    pub adam_epsilon: f32,
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "d_true")]
    pub gradient_checkpointing: bool,
    #[serde(default)]
    pub checkpoint_offload: bool,
    #[serde(default)]
    pub save_steps: u64,
    #[serde(default = "d_one_u")]
    pub logging_steps: u64,
    /// Refuse to start when the predicted peak is above this: "24GiB", "16000MiB", bytes.
    pub max_memory: Option<serde_yaml::Value>,
    #[serde(default = "d_auto")]
    pub dist_backend: String,
    #[serde(default = "d_dist_timeout")]
    pub dist_timeout: f64,
    pub eval_strategy: Option<String>,
    pub eval_steps: Option<u64>,
    #[serde(default)]
    pub load_best_model_at_end: bool,
    pub metric_for_best_model: Option<String>,
    pub early_stopping_patience: Option<u64>,
    pub save_total_limit: Option<usize>,
    pub report_to: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

fn d_format() -> String {
    "auto".into()
}
fn d_masks() -> String {
    "auto".into()
}
fn d_packing_strategy() -> String {
    "bfd".into()
}
fn d_output() -> PathBuf {
    "output".into()
}
fn d_device() -> String {
    "auto".into()
}
fn d_dtype() -> String {
    "auto".into()
}
fn d_quant_type() -> String {
    "nf4".into()
}
fn d_optim() -> String {
    "adamw_torch".into()
}
fn d_auto() -> String {
    "auto".into()
}
fn d_dist_timeout() -> f64 {
    300.0
}
fn d_lr() -> f64 {
    2e-4
}
fn d_sched() -> String {
    "linear".into()
}
fn d_epochs() -> f64 {
    1.0
}
fn d_bs() -> usize {
    4
}
fn d_one() -> usize {
    1
}
fn d_one_u() -> u64 {
    1
}
fn d_seq() -> usize {
    1024
}
fn d_true() -> bool {
    true
}
fn d_seed() -> u64 {
    42
}
fn d_b1() -> f32 {
    0.9
}
fn d_b2() -> f32 {
    0.999
}
fn d_eps() -> f32 {
    1e-8
}
fn d_clip() -> f64 {
    1.0
}

/// Everything `temper train` needs, resolved.
pub struct TrainPlan {
    pub model_dir: PathBuf,
    pub data: temper_data::DataConfig,
    pub device: String,
    /// Storage type of activations and frozen weights: auto | bfloat16 | float16 | float32.
    pub dtype: String,
    /// How the frozen weights load (4-bit or 8-bit quantisation).
    pub load: temper_model::LoadOptions,
    pub max_seq_len: usize,
    /// Context extension asked for in the config (`rope_scaling`), applied when loading.
    pub rope_scaling: Option<serde_json::Value>,
    pub packing: bool,
    pub logging_steps: u64,
    /// Bytes, from `max_memory`.
    pub max_memory: Option<u64>,
    /// How ranks exchange gradients, and how long one waits for the others.
    pub dist_backend: crate::dist::DistBackend,
    pub dist_timeout: std::time::Duration,
    pub settings: TrainSettings,
    /// What the user should know about how the settings were resolved (printed by train).
    pub notes: Vec<String>,
    /// A fresh run may use a non-empty output_dir (temper's files in it are removed).
    pub overwrite_output_dir: bool,
    /// Evaluation during training, best model, early stopping, checkpoints kept.
    pub eval: temper_train::EvalOptions,
    /// Write TensorBoard event files (`report_to: tensorboard`).
    pub tensorboard: bool,
    /// The model as the user named it (config's `model`), for adapter_config.json and the
    /// model card.
    pub model_name: String,
    /// Every key with the value this run uses, paths absolute (training_config.yaml).
    pub resolved_yaml: String,
}

/// Reads the YAML file (temper's keys, or axolotl's, mapped: see [`crate::axolotl`]),
/// applies `--key value` overrides, and checks every key. An error about a key names where
/// it came from: the file, or the command line. `--config-format temper|axolotl|auto` among
/// the overrides says how to read the file (auto: axolotl's when it has `base_model` or
/// `datasets`).
pub fn load(path: Option<&Path>, overrides: &[(String, String)]) -> Result<(TrainFile, PathBuf)> {
    let mut format = "auto".to_string();
    let overrides: Vec<&(String, String)> = overrides
        .iter()
        .filter(|(k, v)| {
            let is_format = k == "config_format";
            if is_format {
                format = v.clone();
            }
            !is_format
        })
        .collect();
    let (mut map, base) = match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let value: Value = serde_yaml::from_str(&text)
                .with_context(|| format!("{}: not valid YAML", p.display()))?;
            let map = match value {
                Value::Mapping(m) => m,
                Value::Null => Mapping::new(),
                _ => bail!("{}: expected a mapping of `key: value` lines", p.display()),
            };
            let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
            (map, base)
        }
        None => (Mapping::new(), PathBuf::new()),
    };
    let file_name = path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "command line".into());
    let axolotl = match format.as_str() {
        "auto" => crate::axolotl::looks_like_axolotl(&map),
        "axolotl" => true,
        "temper" => false,
        other => bail!("--config-format `{other}` is not one of temper, axolotl, auto"),
    };
    let mut renamed = Vec::new();
    if axolotl {
        let mapped = crate::axolotl::to_temper(&map)
            .with_context(|| format!("{file_name}: reading it as an axolotl config"))?;
        eprintln!("config: {file_name} read as an axolotl config (keys mapped to temper's)");
        for n in &mapped.notes {
            eprintln!("{n}");
        }
        map = mapped.map;
        renamed = mapped.renamed;
    }
    let mut from_command_line = Vec::new();
    for (k, v) in overrides {
        let value: Value = serde_yaml::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
        map.insert(Value::String(k.clone()), value);
        from_command_line.push(k.as_str());
    }
    // Where a key was given, for errors about it.
    let origin = |key: &str| -> String {
        if from_command_line.contains(&key) {
            "command line".into()
        } else {
            file_name.clone()
        }
    };
    // The key as the user wrote it: axolotl's name for it when the file is axolotl's.
    let written = |key: &str| -> String {
        match renamed.iter().find(|(ours, _)| ours == key) {
            Some((_, theirs)) if !from_command_line.contains(&key) => {
                format!("`{theirs}` (temper's `{key}`)")
            }
            _ => format!("`{key}`"),
        }
    };
    for key in map.keys() {
        let name = key
            .as_str()
            .ok_or_else(|| anyhow!("{file_name}: key {key:?} is not a string"))?;
        if !TRAIN_KEYS.iter().any(|k| k.name == name) {
            let cli = from_command_line.contains(&name);
            let dashes = if cli { "--" } else { "" };
            let hint = match crate::axolotl::RENAMED.iter().find(|(a, _)| *a == name) {
                Some((_, ours)) if !axolotl => format!(
                    "; did you mean `{dashes}{ours}`? `{name}` is axolotl's name for it \
                     (`--config-format axolotl` reads an axolotl config as it is)"
                ),
                _ => suggest(name)
                    .map(|s| format!("; did you mean `{dashes}{s}`?"))
                    .unwrap_or_default(),
            };
            if cli {
                bail!(
                    "command line: unknown option `--{name}`{hint} (`temper train --help` \
                     lists every key)"
                );
            }
            bail!(
                "{}: unknown key `{name}`{hint} (`temper train --help` lists every key)",
                origin(name)
            );
        }
    }
    let file: TrainFile = match serde_yaml::from_value(Value::Mapping(map.clone())) {
        Ok(f) => f,
        Err(e) => {
            let (key, msg) = wrong_type(&map, e, &written);
            match key {
                Some(k) => bail!("{}: {msg}", origin(&k)),
                None => bail!("{file_name}: {msg}"),
            }
        }
    };
    Ok((file, base))
}

/// Names the key whose value does not fit its type, and the value: every key is optional,
/// so each one is tried alone.
fn wrong_type(
    map: &Mapping,
    whole: serde_yaml::Error,
    written: &dyn Fn(&str) -> String,
) -> (Option<String>, String) {
    for (k, v) in map {
        let mut one = Mapping::new();
        one.insert(k.clone(), v.clone());
        if let Err(e) = serde_yaml::from_value::<TrainFile>(Value::Mapping(one)) {
            let key = k.as_str().unwrap_or("?");
            let default = TRAIN_KEYS
                .iter()
                .find(|d| d.name == key)
                .map(|d| {
                    // "(from epochs)" reads "default: from epochs"
                    let d = d
                        .default
                        .strip_prefix('(')
                        .and_then(|x| x.strip_suffix(')'))
                        .unwrap_or(d.default);
                    format!(" (default: {d})")
                })
                .unwrap_or_default();
            // Shown on one line: `abc`, `[1, 2]`, `{a: 1}`.
            let shown = match v {
                Value::String(t) => t.clone(),
                other => serde_json::to_string(other).unwrap_or_default(),
            };
            return (
                Some(key.to_string()),
                format!(
                    "key {} has the value `{shown}`, which is not valid for it: {}{default}",
                    written(key),
                    plain_type_error(key, &e.to_string())
                ),
            );
        }
    }
    (
        None,
        format!("a key has a value of the wrong type: {whole}"),
    )
}

/// serde's message for a value of the wrong type, in words: "invalid type: string "abc",
/// expected a whole number" (not "expected i64"), without the key's name it starts with.
fn plain_type_error(key: &str, serde: &str) -> String {
    let why = serde.strip_prefix(&format!("{key}: ")).unwrap_or(serde);
    let why = why.split(" at line ").next().unwrap_or(why);
    let mut out = why.to_string();
    for (rust, words) in [
        ("expected i64", "expected a whole number"),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected usize", "expected a whole number of 0 or more"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
    ] {
        if let Some(head) = out.strip_suffix(rust) {
            out = format!("{head}{words}");
        }
    }
    out
}

/// A number-valued key must lie in its domain; `what` says the domain in words.
/// (Each caller's `ok` is false for NaN.)
fn check_range(key: &str, value: impl std::fmt::Display, ok: bool, what: &str) -> Result<()> {
    if !ok {
        bail!("{key} is {value}; it must be {what}");
    }
    Ok(())
}

fn rel(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// A `data` entry: a path relative to the YAML file's folder, or a Hub dataset id
/// (`owner/name`) kept as written when no such path exists there.
fn data_rel(base: &Path, p: &Path) -> PathBuf {
    let joined = rel(base, p);
    if !joined.exists() && temper_data::hub::looks_like_hub_id(p) {
        return p.to_path_buf();
    }
    joined
}

impl TrainFile {
    /// Checks values and turns the file into a plan. `base` is the YAML file's folder.
    pub fn resolve(self, base: &Path, resume: Option<Option<PathBuf>>) -> Result<TrainPlan> {
        let init_adapter = self.init_adapter.as_ref().map(|p| rel(base, p));
        let eval = self.eval_options()?;
        let tensorboard = report_to_tensorboard(self.report_to.as_ref())?;
        let model_name = self
            .model
            .as_ref()
            .map(|m| m.display().to_string())
            .unwrap_or_default();
        let (lora, lora_notes) = self.lora_config(init_adapter.as_deref())?;
        let model_dir = rel(
            base,
            &self
                .model
                .ok_or_else(|| anyhow!("`model` is required: a Hugging Face model folder"))?,
        );
        let data = match self
            .data
            .ok_or_else(|| anyhow!("`data` is required: a JSONL file or a list of them"))?
        {
            OneOrMany::One(p) => vec![data_rel(base, &p)],
            OneOrMany::Many(v) => v.iter().map(|p| data_rel(base, p)).collect(),
        };
        let data = crate::dataset::resolve(
            crate::dataset::DataKeys {
                train: data,
                eval: match &self.eval_data {
                    None => Vec::new(),
                    Some(OneOrMany::One(p)) => vec![data_rel(base, p)],
                    Some(OneOrMany::Many(v)) => v.iter().map(|p| data_rel(base, p)).collect(),
                },
                eval_split: self.eval_split,
                dataset_format: &self.dataset_format,
                chat_template: self.chat_template.as_deref(),
                completion_only_loss: self.completion_only_loss,
                assistant_only_loss: self.assistant_only_loss,
                assistant_masks: &self.assistant_masks,
                packing_strategy: &self.packing_strategy,
                skip_bad_rows: self.skip_bad_rows,
                cache_dir: self.dataset_cache_dir.as_deref(),
                max_seq_len: self.max_seq_len,
                packing: self.packing,
                seed: self.seed,
            },
            base,
        )?;
        if self.learning_rate <= 0.0 || !self.learning_rate.is_finite() {
            bail!("learning_rate must be positive, got {}", self.learning_rate);
        }
        let e = self.num_train_epochs;
        check_range(
            "num_train_epochs",
            e,
            e > 0.0 && e.is_finite(),
            "a positive number of epochs",
        )?;
        let w = self.warmup_ratio;
        check_range(
            "warmup_ratio",
            w,
            (0.0..=1.0).contains(&w),
            "a fraction of the steps, between 0 and 1",
        )?;
        for (key, b) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            check_range(key, b, (0.0..1.0).contains(&b), "in [0, 1)")?;
        }
        let wd = self.weight_decay;
        check_range(
            "weight_decay",
            wd,
            wd >= 0.0 && wd.is_finite(),
            "0 or a positive number (0.0 or 0.01 are usual)",
        )?;
        let eps = self.adam_epsilon;
        check_range(
            "adam_epsilon",
            eps,
            eps > 0.0 && eps.is_finite(),
            "a small positive number (1e-8 is usual); with 0, a parameter whose gradients \
             are all zero divides 0 by 0",
        )?;
        let clip = self.max_grad_norm;
        check_range(
            "max_grad_norm",
            clip,
            clip >= 0.0 && !clip.is_nan(),
            "0 (no clipping) or a positive number",
        )?;
        if let Some(n) = self.max_steps {
            if n <= 0 {
                bail!(
                    "max_steps is {n}; it must be at least 1 (leave it out to train num_train_epochs)"
                );
            }
        }
        let schedule = ScheduleKind::parse(&self.lr_scheduler_type).ok_or_else(|| {
            anyhow!(
                "lr_scheduler_type `{}` is not one of constant, linear, cosine",
                self.lr_scheduler_type
            )
        })?;
        if self.max_seq_len < 2 {
            bail!("max_seq_len must be at least 2");
        }
        if self.load_in_8bit && self.load_in_4bit {
            bail!("load_in_8bit and load_in_4bit are both true: choose one");
        }
        if let Some(t) = self.llm_int8_threshold {
            if !(t.is_finite() && t >= 0.0) {
                bail!(
                    "llm_int8_threshold {t} must be a number >= 0 (bitsandbytes' default is 6.0)"
                );
            }
        }
        let quant_type = QuantType::parse(&self.bnb_4bit_quant_type).ok_or_else(|| {
            anyhow!(
                "bnb_4bit_quant_type `{}` is not one of nf4, fp4",
                self.bnb_4bit_quant_type
            )
        })?;
        let load = temper_model::LoadOptions {
            quantize: self.load_in_4bit.then_some(temper_model::QuantizeOnLoad {
                quant_type,
                blocksize: 64,
                double_quant: self.bnb_4bit_use_double_quant,
            }),
            int8: self.load_in_8bit,
        };
        // bitsandbytes' compute dtype is the dtype the GEMMs run in: temper's `dtype`.
        let dtype = match (&self.bnb_4bit_compute_dtype, self.dtype.as_str()) {
            (Some(c), "auto") => c.clone(),
            _ => self.dtype.clone(),
        };
        // (states in mapped host memory, 8-bit states), as transformers' `optim` names them.
        let (moments_on_host, states_8bit) = match self.optim.as_str() {
            "adamw_torch" | "adamw" => (false, false),
            "paged_adamw_32bit" => (true, false),
            "adamw_8bit" | "adamw_bnb_8bit" => (false, true),
            "paged_adamw_8bit" => (true, true),
            other => bail!(
                "optim `{other}` is not one of adamw_torch, paged_adamw_32bit, adamw_8bit, \
                 paged_adamw_8bit"
            ),
        };
        let dist_backend = crate::dist::DistBackend::parse(&self.dist_backend)?;
        if !(self.dist_timeout > 0.0 && self.dist_timeout.is_finite()) {
            bail!(
                "dist_timeout must be a positive number of seconds, got {}",
                self.dist_timeout
            );
        }
        let output_dir = rel(base, &self.output_dir);
        let resume_from = match resume {
            None => None,
            Some(Some(p)) => Some(p),
            Some(None) => Some(temper_train::checkpoint::latest(&output_dir)?.ok_or_else(
                || {
                    anyhow!(
                        "--resume: no checkpoint-<step> folder with trainer_state.json in {}",
                        output_dir.display()
                    )
                },
            )?),
        };
        let settings = TrainSettings {
            lora,
            learning_rate: self.learning_rate,
            schedule,
            warmup_steps: self.warmup_steps,
            warmup_ratio: self.warmup_ratio,
            max_steps: self.max_steps.map(|n| n as u64),
            epochs: self.num_train_epochs,
            micro_batch_size: self.per_device_train_batch_size,
            grad_accum: self.gradient_accumulation_steps,
            seed: self.seed,
            adamw: AdamWConfig {
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_epsilon,
                weight_decay: self.weight_decay,
                on_host: moments_on_host,
                states_8bit,
                ..AdamWConfig::default()
            },
            max_grad_norm: self.max_grad_norm,
            checkpointing: if self.gradient_checkpointing && self.checkpoint_offload {
                Checkpointing::EveryLayerOnHost
            } else if self.gradient_checkpointing {
                Checkpointing::EveryLayer
            } else {
                Checkpointing::Off
            },
            save_steps: self.save_steps,
            output_dir,
            base_model: base_model_name(&model_dir),
            resume_from,
            init_adapter,
            base_fingerprint: String::new(),
            resume_changed: self.resume_changed,
        };
        Ok(TrainPlan {
            model_dir,
            data,
            device: self.device,
            dtype,
            load,
            max_seq_len: self.max_seq_len,
            rope_scaling: self.rope_scaling,
            packing: self.packing,
            logging_steps: self.logging_steps.max(1),
            dist_backend,
            dist_timeout: std::time::Duration::from_secs_f64(self.dist_timeout),
            max_memory: match &self.max_memory {
                None => None,
                Some(Value::String(text)) => Some(parse_bytes(text)?),
                Some(Value::Number(n)) => Some(parse_bytes(&n.to_string())?),
                Some(other) => bail!("max_memory must be a size like 22GiB, got {other:?}"),
            },
            settings,
            notes: lora_notes,
            overwrite_output_dir: self.overwrite_output_dir,
            eval,
            tensorboard,
            model_name,
            resolved_yaml: String::new(),
        })
    }

    /// Every key with the value this run uses (defaults filled in, keys left unset omitted),
    /// paths made absolute so that the file works from anywhere: training_config.yaml.
    pub fn resolved_yaml(&self, base: &Path) -> Result<String> {
        let value = serde_yaml::to_value(self).context("writing the resolved config")?;
        let Value::Mapping(map) = value else {
            bail!("the resolved config is not a mapping");
        };
        let abs = |v: &Value, data: bool| -> Value {
            match v {
                Value::String(p) => {
                    let path = Path::new(p);
                    let joined = if data {
                        data_rel(base, path)
                    } else {
                        rel(base, path)
                    };
                    if data && joined == path && !path.is_absolute() {
                        return v.clone(); // a Hub id
                    }
                    let abs = std::path::absolute(&joined).unwrap_or(joined);
                    Value::String(abs.display().to_string())
                }
                other => other.clone(),
            }
        };
        let mut out = Mapping::new();
        for (k, v) in map {
            if v.is_null() {
                continue;
            }
            let key = k.as_str().unwrap_or_default();
            let v = match (key, &v) {
                ("model" | "output_dir" | "init_adapter", _) => abs(&v, false),
                ("data" | "eval_data", Value::Sequence(list)) => {
                    Value::Sequence(list.iter().map(|x| abs(x, true)).collect())
                }
                ("data" | "eval_data", _) => abs(&v, true),
                ("chat_template", Value::String(t))
                    if !t.eq_ignore_ascii_case("chatml")
                        && !t.contains("{%")
                        && !t.contains("{{") =>
                {
                    abs(&v, false)
                }
                _ => v,
            };
            out.insert(k, v);
        }
        let text =
            serde_yaml::to_string(&Value::Mapping(out)).context("writing the resolved config")?;
        Ok(format!(
            "# The settings of this run, every key as used (defaults filled in, paths absolute).\n\
             # `temper train training_config.yaml` runs it again.\n{text}"
        ))
    }

    /// The evaluation keys, checked together as transformers checks them.
    fn eval_options(&self) -> Result<temper_train::EvalOptions> {
        use temper_train::EvalEvery;
        let every = match (self.eval_strategy.as_deref(), self.eval_steps) {
            (None, None) | (Some("no"), None) => EvalEvery::Never,
            (Some("no"), Some(_)) => {
                bail!("eval_steps is set but eval_strategy is `no`: remove one of them")
            }
            (None | Some("steps"), Some(0)) => bail!("eval_steps must be at least 1"),
            (None | Some("steps"), Some(n)) => EvalEvery::Steps(n),
            (Some("steps"), None) => EvalEvery::Steps(self.logging_steps.max(1)),
            (Some("epoch"), _) => EvalEvery::Epoch,
            (Some(other), _) => bail!("eval_strategy `{other}` is not one of no, steps, epoch"),
        };
        match self.metric_for_best_model.as_deref() {
            None | Some("eval_loss" | "loss") => {}
            Some(other) => {
                bail!("metric_for_best_model `{other}`: only eval_loss is computed during training")
            }
        }
        let needs_eval = self.load_best_model_at_end || self.early_stopping_patience.is_some();
        if needs_eval && every == EvalEvery::Never {
            bail!(
                "load_best_model_at_end and early_stopping_patience need evaluation during \
                 training: set eval_steps (or eval_strategy: epoch) and eval_data or eval_split"
            );
        }
        if needs_eval && self.eval_data.is_none() && self.eval_split <= 0.0 {
            bail!(
                "load_best_model_at_end and early_stopping_patience need eval rows: set \
                 eval_data or eval_split"
            );
        }
        if every != EvalEvery::Never && self.eval_data.is_none() && self.eval_split <= 0.0 {
            bail!("eval_strategy / eval_steps need eval rows: set eval_data or eval_split");
        }
        if self.save_total_limit == Some(0) {
            bail!("save_total_limit must be at least 1 (leave it out to keep every checkpoint)");
        }
        Ok(temper_train::EvalOptions {
            every,
            batch_size: self.per_device_train_batch_size,
            load_best_model_at_end: self.load_best_model_at_end,
            early_stopping_patience: self.early_stopping_patience,
            save_total_limit: self.save_total_limit,
        })
    }

    /// The LoRA settings: the lora keys given, the rest from `init_adapter` when there is one
    /// (a key given must then agree with the adapter), else the defaults. Returns notes saying
    /// which keys came from the adapter.
    fn lora_config(&self, init_adapter: Option<&Path>) -> Result<(LoraConfig, Vec<String>)> {
        let given_targets = match &self.target_modules {
            Some(v) => Some(parse_targets(v).map_err(|e| anyhow!("target_modules: {e}"))?),
            None => None,
        };
        let Some(dir) = init_adapter else {
            let lora = LoraConfig {
                r: self.lora_r.unwrap_or(16),
                alpha: self.lora_alpha.unwrap_or(32.0),
                dropout: self.lora_dropout.unwrap_or(0.05),
                use_rslora: self.use_rslora.unwrap_or(false),
                targets: match given_targets {
                    Some(t) => t,
                    None => Target::ALL.to_vec(),
                },
            };
            check_lora(&lora)?;
            return Ok((lora, Vec::new()));
        };
        let from = temper_model::adapter::read_config(dir).with_context(|| {
            format!(
                "init_adapter {}: reading the adapter's settings (a PEFT adapter folder holds \
                 adapter_config.json and adapter_model.safetensors)",
                dir.display()
            )
        })?;
        let mut taken: Vec<String> = Vec::new();
        let mut disagree: Vec<String> = Vec::new();
        /// The adapter's value when the key is not given (noted in `taken`); the given value
        /// otherwise, noted in `disagree` when it differs.
        fn pick<T: PartialEq>(
            key: &str,
            given: Option<T>,
            adapter: T,
            show: impl Fn(&T) -> String,
            taken: &mut Vec<String>,
            disagree: &mut Vec<String>,
        ) -> T {
            match given {
                Some(v) if v != adapter => {
                    disagree.push(format!(
                        "{key} is {} here but {} in the adapter",
                        show(&v),
                        show(&adapter)
                    ));
                    v
                }
                Some(v) => v,
                None => {
                    taken.push(format!("{key} {}", show(&adapter)));
                    adapter
                }
            }
        }
        let names = |t: &Vec<Target>| {
            let n: Vec<&str> = t.iter().map(|t| t.name()).collect();
            format!("[{}]", n.join(", "))
        };
        let (t, d) = (&mut taken, &mut disagree);
        let lora = LoraConfig {
            r: pick("lora_r", self.lora_r, from.r, |v| v.to_string(), t, d),
            alpha: pick(
                "lora_alpha",
                self.lora_alpha,
                from.alpha,
                |v| v.to_string(),
                t,
                d,
            ),
            use_rslora: pick(
                "use_rslora",
                self.use_rslora,
                from.use_rslora,
                |v| v.to_string(),
                t,
                d,
            ),
            targets: pick(
                "target_modules",
                given_targets,
                from.targets.clone(),
                names,
                t,
                d,
            ),
            // A training setting, not part of the weights: the config's wins.
            dropout: match self.lora_dropout {
                Some(v) => v,
                None => {
                    t.push(format!("lora_dropout {}", from.dropout));
                    from.dropout
                }
            },
        };
        if !disagree.is_empty() {
            bail!(
                "init_adapter {}: {}; remove those keys to take the adapter's values, or start \
                 from another adapter",
                dir.display(),
                disagree.join("; ")
            );
        }
        check_lora(&lora)?;
        let mut notes = Vec::new();
        if !taken.is_empty() {
            notes.push(format!(
                "note: init_adapter {}: {} (from the adapter)",
                dir.display(),
                taken.join(", ")
            ));
        }
        Ok((lora, notes))
    }
}

/// The largest LoRA rank accepted: far above any use, and keeps size arithmetic in 64 bits.
const MAX_LORA_R: usize = 1 << 16;
/// What adapter_config.json's `base_model_name_or_path` holds: the Hub id when the model is
/// known to be one (a folder of the Hugging Face cache, `models--owner--name/snapshots/..`, or
/// a config.json whose `_name_or_path` is `owner/name`), else the absolute path of what the
/// user gave, so that PEFT finds the base from anywhere.
pub fn base_model_name(model: &Path) -> String {
    for c in model.components() {
        let c = c.as_os_str().to_string_lossy();
        if let Some(rest) = c.strip_prefix("models--") {
            if let Some((owner, name)) = rest.split_once("--") {
                return format!("{owner}/{name}");
            }
        }
    }
    let named = std::fs::read_to_string(model.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("_name_or_path")?.as_str().map(str::to_string));
    if let Some(id) = named {
        if temper_data::hub::looks_like_hub_id(Path::new(&id)) && !Path::new(&id).exists() {
            return id;
        }
    }
    std::fs::canonicalize(model)
        .or_else(|_| std::path::absolute(model))
        .unwrap_or_else(|_| model.to_path_buf())
        .display()
        .to_string()
}

/// `report_to`: none, tensorboard, or a list of them (as transformers takes it).
fn report_to_tensorboard(v: Option<&serde_json::Value>) -> Result<bool> {
    let names: Vec<String> = match v {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| anyhow!("report_to: expected names like tensorboard, got {x}"))
            })
            .collect::<Result<_>>()?,
        Some(other) => bail!("report_to: expected none or tensorboard, got {other}"),
    };
    let mut tb = false;
    for n in &names {
        match n.as_str() {
            "none" => {}
            "tensorboard" | "all" => tb = true,
            other => bail!("report_to `{other}` is not one of none, tensorboard"),
        }
    }
    Ok(tb)
}

fn check_lora(lora: &LoraConfig) -> Result<()> {
    if lora.r == 0 || lora.r > MAX_LORA_R {
        bail!(
            "lora_r is {}; it must be between 1 and {MAX_LORA_R}",
            lora.r
        );
    }
    if !(lora.alpha > 0.0 && lora.alpha.is_finite()) {
        bail!(
            "lora_alpha is {}; it must be a positive number (often 2 x lora_r)",
            lora.alpha
        );
    }
    if !(0.0..1.0).contains(&lora.dropout) {
        bail!("lora_dropout must be in [0, 1), got {}", lora.dropout);
    }
    Ok(())
}

/// "24GiB", "512MiB", "2.5GB", "1000000": a size in bytes.
pub fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.trim().parse().map_err(|_| {
        anyhow!("max_memory `{text}` is not a size like 24GiB, 512MiB or a number of bytes")
    })?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            bail!("max_memory `{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)")
        }
    };
    if value.is_nan() || value < 0.0 || !value.is_finite() {
        bail!("max_memory `{text}` must be a positive size");
    }
    Ok((value * scale) as u64)
}

/// The YAML config parser under the fuzzer (see crates/temper-fuzz): any bytes give a
/// config or an error, never a panic. `TEMPER_FUZZ_SECONDS` sets a longer run.
#[cfg(test)]
mod fuzz_yaml {
    use std::time::Duration;

    use temper_fuzz::{class, fuzz, Budget, Target};

    fn run(bytes: &[u8]) -> String {
        thread_local! {
            static DIR: tempfile::TempDir = tempfile::tempdir().expect("tempdir");
        }
        DIR.with(|d| {
            let path = d.path().join("train.yaml");
            std::fs::write(&path, bytes).expect("write");
            let r = super::load(Some(&path), &[]).and_then(|(f, base)| f.resolve(&base, None));
            class(&r.map(|_| ()))
        })
    }

    #[test]
    fn fuzz_yaml_config() {
        let seconds: f64 = std::env::var("TEMPER_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        let budget = if seconds > 0.0 {
            Budget {
                executions: u64::MAX,
                time: Duration::from_secs_f64(seconds),
            }
        } else {
            Budget {
                executions: 1000,
                time: Duration::from_secs(20),
            }
        };
        let target = Target {
            name: "yaml_config",
            seeds: || {
                let root = temper_fuzz::repo();
                vec![
                    std::fs::read(root.join("examples/tiny/train.yaml")).unwrap_or_default(),
                    b"model: m\ndata: [a.jsonl, b.jsonl]\nmax_memory: 24GiB\nrope_scaling: {rope_type: yarn}\n"
                        .to_vec(),
                ]
            },
            run,
            dictionary: &[
                ": ",
                "\n",
                "- ",
                "[",
                "]",
                "{",
                "}",
                "&a ",
                "*a",
                "!!binary ",
                "<<: ",
                "~",
                "null",
                "-1",
                "1e400",
                ".nan",
                "-.inf",
                "0x10",
                "18446744073709551616",
                "max_steps",
                "num_train_epochs",
                "warmup_ratio",
                "lora_r",
                "lora_alpha",
                "max_memory",
                "rope_scaling",
                "target_modules",
                "data",
                "model",
            ],
        };
        let r = fuzz(&target, budget, 7);
        println!(
            "{:<24} executions {:>10}  ({:>8.0}/s)  corpus {:>4}  findings {}",
            r.target,
            r.executions,
            r.executions as f64 / r.seconds.max(1e-9),
            r.corpus,
            r.findings.len()
        );
        let found: Vec<String> = r
            .findings
            .iter()
            .map(|f| {
                format!(
                    "FINDING {}: {} on {:?}",
                    f.kind,
                    f.message,
                    String::from_utf8_lossy(&f.input)
                )
            })
            .collect();
        assert!(found.is_empty(), "{}", found.join("\n"));
    }
}
