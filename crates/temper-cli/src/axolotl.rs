//! axolotl's YAML config read as temper's: the keys the two share are mapped onto temper's
//! names (`base_model` -> `model`, `datasets` -> `data` and `dataset_format`,
//! `micro_batch_size` -> `per_device_train_batch_size`, ...), and every other key that is
//! set is refused by name, so that nothing the file asks for is silently dropped. A key
//! whose value is empty, null or false asks for nothing and is passed over.
//!
//! Key names and the `datasets:` entry shape follow axolotl's config reference
//! (docs/config.qmd) and its dataset formats (docs/dataset-formats/).

use anyhow::{bail, Result};
use serde_yaml::{Mapping, Value};

/// axolotl's keys that temper reads under another name, for "did you mean" when a temper
/// config uses them: (axolotl's name, temper's).
pub const RENAMED: &[(&str, &str)] = &[
    ("base_model", "model"),
    ("datasets", "data"),
    ("test_datasets", "eval_data"),
    ("val_set_size", "eval_split"),
    ("sequence_len", "max_seq_len"),
    ("sample_packing", "packing"),
    ("micro_batch_size", "per_device_train_batch_size"),
    ("num_epochs", "num_train_epochs"),
    ("lr_scheduler", "lr_scheduler_type"),
    ("optimizer", "optim"),
    ("lora_target_modules", "target_modules"),
    ("lora_target_linear", "target_modules"),
    ("lora_model_dir", "init_adapter"),
    ("peft_use_rslora", "use_rslora"),
    ("gpu_memory_limit", "max_memory"),
    ("train_on_inputs", "assistant_only_loss"),
    ("bf16", "dtype"),
    ("fp16", "dtype"),
];

/// Keys named the same in both, with the same meaning.
const SAME: &[&str] = &[
    "output_dir",
    "learning_rate",
    "warmup_steps",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_steps",
    "gradient_accumulation_steps",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "eval_steps",
    "eval_strategy",
    "early_stopping_patience",
    "load_best_model_at_end",
    "metric_for_best_model",
    "load_in_4bit",
    "load_in_8bit",
    "seed",
];

/// Keys that change nothing in temper's run (it has one attention implementation, always
/// packs without padding, keeps no prepared-dataset copy): passed over with a note.
const NO_EFFECT: &[&str] = &[
    "strict",
    "model_type",
    "tokenizer_type",
    "flash_attention",
    "sdp_attention",
    "xformers_attention",
    "pad_to_sequence_len",
    "eval_sample_packing",
    "dataset_prepared_path",
    "tf32",
];

/// True when the file looks like axolotl's: it has keys only axolotl uses for its model
/// or data.
pub fn looks_like_axolotl(map: &Mapping) -> bool {
    ["base_model", "datasets"]
        .iter()
        .any(|k| map.contains_key(Value::String((*k).into())))
}

/// A value that asks for nothing: null, false, an empty string, list or mapping.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.trim().is_empty(),
        Value::Sequence(s) => s.is_empty(),
        Value::Mapping(m) => m.is_empty(),
        _ => false,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// What one `datasets:` entry asks for.
struct Entry {
    path: Value,
    format: &'static str,
    assistant_only: bool,
    template: Option<Value>,
}

/// One entry of `datasets:` / `test_datasets:`: `path` (a file, a folder or a Hub id; or
/// `json` with `data_files`), `type` (alpaca, chat_template, sharegpt, completion) and the
/// chat_template fields temper reads the same way.
fn entry(list: &str, i: usize, v: &Value) -> Result<Entry> {
    let at = format!("{list}[{i}]");
    let m = match v {
        Value::Mapping(m) => m,
        Value::String(_) => bail!(
            "{at}: an axolotl dataset is a mapping with `path` and `type`, e.g. \
             `- path: data.jsonl` / `type: chat_template`"
        ),
        other => bail!("{at}: expected a mapping with `path` and `type`, got {other:?}"),
    };
    let get = |k: &str| m.get(Value::String(k.into())).filter(|v| !is_unset(v));
    let mut path = get("path")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{at}: `path` is required"))?;
    if let Some(files) = get("data_files") {
        if matches!(text(&path).as_str(), "json" | "parquet") {
            path = files.clone();
        } else {
            bail!(
                "{at}: `data_files` with path `{}`: temper reads data_files only with \
                 path json or parquet (or give the file as `path`)",
                text(&path)
            );
        }
    }
    let kind = get("type").map(text).unwrap_or_else(|| "completion".into());
    let mut fields_messages = None;
    let mut template = None;
    let mut assistant_only = false;
    let format = match kind.as_str() {
        "alpaca" => "alpaca",
        "sharegpt" => "sharegpt",
        "completion" => "auto",
        "chat_template" => {
            assistant_only = true;
            fields_messages = Some(get("field_messages").map(text).unwrap_or("messages".into()));
            "auto"
        }
        other => bail!(
            "{at}: type `{other}` is not one temper reads; it reads alpaca, chat_template \
             (messages lists), sharegpt (conversations of from/value) and completion (text)"
        ),
    };
    let mut format = format;
    let mut seen_keys = vec!["path", "type", "data_files", "ds_type", "split"];
    if let Some(split) = get("split") {
        if text(split) != "train" {
            bail!(
                "{at}: split `{}`: temper reads the train split of a Hub dataset",
                text(split)
            );
        }
    }
    if let Some(t) = get("ds_type") {
        if !matches!(text(t).as_str(), "json" | "parquet") {
            bail!(
                "{at}: ds_type `{}`: temper reads json, jsonl and parquet files",
                text(t)
            );
        }
    }
    if let Some(field) = fields_messages {
        seen_keys.extend([
            "field_messages",
            "message_property_mappings",
            "roles_to_train",
            "chat_template",
            "chat_template_jinja",
            "train_on_eos",
        ]);
        let mapping = get("message_property_mappings");
        let (role, content) = match mapping {
            None => ("role".to_string(), "content".to_string()),
            Some(Value::Mapping(mm)) => {
                let f = |k: &str, d: &str| {
                    mm.get(Value::String(k.into()))
                        .map(text)
                        .unwrap_or_else(|| d.to_string())
                };
                for k in mm.keys() {
                    let k = text(k);
                    if k != "role" && k != "content" {
                        bail!(
                            "{at}: message_property_mappings `{k}`: temper maps role and \
                             content only"
                        );
                    }
                }
                (f("role", "role"), f("content", "content"))
            }
            Some(other) => {
                bail!("{at}: message_property_mappings must be a mapping, got {other:?}")
            }
        };
        format = match (field.as_str(), role.as_str(), content.as_str()) {
            ("messages", "role", "content") => "auto",
            ("messages" | "conversations", "from" | "role", "value" | "content") => "sharegpt",
            (f, r, c) => bail!(
                "{at}: field_messages `{f}` with role `{r}` and content `{c}`: temper reads \
                 `messages` of role/content, or `conversations` (or `messages`) of from/value"
            ),
        };
        match get("roles_to_train") {
            None => {}
            Some(Value::Sequence(roles)) if roles.iter().all(|r| text(r) == "assistant") => {}
            Some(other) => bail!(
                "{at}: roles_to_train {}: temper trains the assistant turns (or, with \
                 train_on_inputs, every token)",
                text(other)
            ),
        }
        if let Some(eos) = get("train_on_eos") {
            if text(eos) != "turn" {
                bail!(
                    "{at}: train_on_eos `{}`: temper trains the end of each trained turn \
                     (axolotl's `turn`)",
                    text(eos)
                );
            }
        }
        template = template_of(&at, get("chat_template"), get("chat_template_jinja"))?;
    } else if kind == "completion" {
        seen_keys.push("field");
        if let Some(f) = get("field") {
            if text(f) != "text" {
                bail!(
                    "{at}: field `{}`: temper reads completion rows from `text`",
                    text(f)
                );
            }
        }
    }
    for k in m.keys() {
        let k = text(k);
        let v = &m[Value::String(k.clone())];
        if !seen_keys.contains(&k.as_str()) && !is_unset(v) {
            bail!("{at}: `{k}` is not read by temper (remove it to go on without it)");
        }
    }
    Ok(Entry {
        path,
        format,
        assistant_only,
        template,
    })
}

/// axolotl's `chat_template` (a name) and `chat_template_jinja` (the source) as temper's
/// `chat_template`; None keeps the tokenizer's.
fn template_of(at: &str, name: Option<&Value>, jinja: Option<&Value>) -> Result<Option<Value>> {
    match (name.map(text).as_deref(), jinja) {
        (None | Some("jinja"), Some(src)) => Ok(Some(src.clone())),
        (Some("jinja"), None) => bail!("{at}: chat_template jinja needs chat_template_jinja"),
        (None | Some("tokenizer_default"), None) => Ok(None),
        (Some("chatml" | "tokenizer_default_fallback_chatml"), None) => {
            Ok(Some(Value::String("chatml".into())))
        }
        (Some(other), _) => bail!(
            "{at}: chat_template `{other}`: temper knows tokenizer_default, chatml and jinja \
             (give the template's source as chat_template_jinja)"
        ),
    }
}

/// The datasets of `list` as temper's data paths, one dataset_format for them all, whether
/// they train assistant turns only, and the template they ask for.
fn datasets(list: &str, v: &Value) -> Result<(Value, &'static str, bool, Option<Value>)> {
    let Value::Sequence(items) = v else {
        bail!("{list}: expected a list of datasets (`- path: ...` / `type: ...`)");
    };
    let entries: Vec<Entry> = items
        .iter()
        .enumerate()
        .map(|(i, e)| entry(list, i, e))
        .collect::<Result<_>>()?;
    let Some(first) = entries.first() else {
        bail!("{list}: the list is empty");
    };
    for (i, e) in entries.iter().enumerate() {
        if e.format != first.format || e.assistant_only != first.assistant_only {
            bail!(
                "{list}[{i}]: its type reads rows differently from {list}[0]; temper reads \
                 every dataset of a run one way: split the run, or convert the files"
            );
        }
        if e.template != first.template {
            bail!("{list}[{i}]: its chat_template differs from {list}[0]'s; temper uses one");
        }
    }
    let mut paths = Vec::new();
    for e in &entries {
        match &e.path {
            Value::Sequence(s) => paths.extend(s.iter().cloned()),
            p => paths.push(p.clone()),
        }
    }
    let paths = if paths.len() == 1 {
        paths.remove(0)
    } else {
        Value::Sequence(paths)
    };
    Ok((
        paths,
        first.format,
        first.assistant_only,
        first.template.clone(),
    ))
}

/// An axolotl config mapped onto temper's keys.
pub struct Mapped {
    pub map: Mapping,
    /// For the user: keys passed over, defaults that differ.
    pub notes: Vec<String>,
    /// (temper's key, the axolotl key it came from) where the names differ, so that an
    /// error about a value names the key the user wrote.
    pub renamed: Vec<(String, String)>,
}

/// Maps an axolotl config onto temper's keys.
pub fn to_temper(src: &Mapping) -> Result<Mapped> {
    let mut out = Mapping::new();
    let mut notes = Vec::new();
    let mut passed_over = Vec::new();
    let mut refused = Vec::new();
    let get = |k: &str| src.get(Value::String(k.into())).filter(|v| !is_unset(v));
    let mut template = None;
    let mut assistant_only = false;
    for (k, v) in src {
        let Some(key) = k.as_str() else {
            bail!("key {k:?} is not a string");
        };
        // false is a choice for these two: temper's defaults differ from it.
        let meaningful_false =
            *v == Value::Bool(false) && matches!(key, "train_on_inputs" | "gradient_checkpointing");
        if is_unset(v) && !meaningful_false {
            continue;
        }
        match key {
            k if SAME.contains(&k) => put(&mut out, k, v.clone()),
            "base_model" => put(&mut out, "model", v.clone()),
            "datasets" => {
                let (paths, format, only, t) = datasets("datasets", v)?;
                put(&mut out, "data", paths);
                put(&mut out, "dataset_format", Value::String(format.into()));
                assistant_only = only;
                template = t;
            }
            "test_datasets" => {
                let (paths, _, _, _) = datasets("test_datasets", v)?;
                put(&mut out, "eval_data", paths);
            }
            "val_set_size" => put(&mut out, "eval_split", v.clone()),
            "sequence_len" => put(&mut out, "max_seq_len", v.clone()),
            "sample_packing" => put(&mut out, "packing", v.clone()),
            "micro_batch_size" => put(&mut out, "per_device_train_batch_size", v.clone()),
            "num_epochs" => put(&mut out, "num_train_epochs", v.clone()),
            "lora_model_dir" => put(&mut out, "init_adapter", v.clone()),
            "peft_use_rslora" => put(&mut out, "use_rslora", v.clone()),
            "gpu_memory_limit" => put(&mut out, "max_memory", v.clone()),
            "lora_target_modules" => put(&mut out, "target_modules", v.clone()),
            "lora_target_linear" => put(
                &mut out,
                "target_modules",
                Value::String("all-linear".into()),
            ),
            "lr_scheduler" => put(
                &mut out,
                "lr_scheduler_type",
                Value::String(match text(v).as_str() {
                    "constant_with_warmup" => "constant".into(),
                    other => other.into(),
                }),
            ),
            "optimizer" => put(
                &mut out,
                "optim",
                Value::String(match text(v).as_str() {
                    "adamw_torch_fused" => "adamw_torch".into(),
                    other => other.into(),
                }),
            ),
            "adapter" => match text(v).as_str() {
                "lora" => {}
                "qlora" => put(&mut out, "load_in_4bit", Value::Bool(true)),
                other => bail!("adapter `{other}`: temper trains lora and qlora adapters"),
            },
            "gradient_checkpointing" => match v {
                Value::Bool(b) => put(&mut out, "gradient_checkpointing", Value::Bool(*b)),
                Value::String(s) if s == "offload" => {
                    put(&mut out, "gradient_checkpointing", Value::Bool(true));
                    put(&mut out, "checkpoint_offload", Value::Bool(true));
                }
                other => bail!(
                    "gradient_checkpointing `{}`: temper takes true, false or offload",
                    text(other)
                ),
            },
            "train_on_inputs" => put(&mut out, "train_on_inputs", v.clone()),
            "bf16" | "bfloat16" => match text(v).as_str() {
                "true" => put(&mut out, "dtype", Value::String("bfloat16".into())),
                "auto" => {}
                other => bail!("{key} `{other}`: temper takes true, false or auto"),
            },
            "fp16" | "float16" => put(&mut out, "dtype", Value::String("float16".into())),
            "chat_template" | "chat_template_jinja" => {}
            "bnb_config_kwargs" => {
                let Value::Mapping(m) = v else {
                    bail!("bnb_config_kwargs must be a mapping");
                };
                for (bk, bv) in m {
                    match bk.as_str() {
                        Some(
                            n @ ("bnb_4bit_quant_type"
                            | "bnb_4bit_use_double_quant"
                            | "bnb_4bit_compute_dtype"
                            | "llm_int8_threshold"),
                        ) => put(&mut out, n, bv.clone()),
                        Some("llm_int8_has_fp16_weight") if is_unset(bv) => {}
                        _ => bail!("bnb_config_kwargs `{}` is not read by temper", text(bk)),
                    }
                }
            }
            k if NO_EFFECT.contains(&k) => passed_over.push(k.to_string()),
            k => refused.push(k.to_string()),
        }
    }
    if !refused.is_empty() {
        bail!(
            "{} not read by temper: {} (remove {} to go on without {})",
            if refused.len() == 1 {
                "this axolotl key is"
            } else {
                "these axolotl keys are"
            },
            refused.join(", "),
            if refused.len() == 1 { "it" } else { "them" },
            if refused.len() == 1 { "it" } else { "them" },
        );
    }
    // train_on_inputs: true trains every token, as axolotl does; its default false trains
    // the assistant turns of chat_template data and the outputs of alpaca rows.
    let on_inputs = out
        .remove(Value::String("train_on_inputs".into()))
        .is_some_and(|v| v == Value::Bool(true));
    if on_inputs {
        put(&mut out, "completion_only_loss", Value::Bool(false));
    } else if assistant_only {
        put(&mut out, "assistant_only_loss", Value::Bool(true));
    }
    let at = "chat_template";
    if let Some(t) = template_of(at, get("chat_template"), get("chat_template_jinja"))?.or(template)
    {
        put(&mut out, "chat_template", t);
    }
    // axolotl's scheduler is cosine when lr_scheduler is left out; temper's default is linear.
    if get("lr_scheduler").is_none() {
        put(
            &mut out,
            "lr_scheduler_type",
            Value::String("cosine".into()),
        );
    }
    if !passed_over.is_empty() {
        notes.push(format!(
            "note: axolotl keys with no effect in temper, passed over: {}",
            passed_over.join(", ")
        ));
    }
    let renamed = RENAMED
        .iter()
        .filter(|(theirs, _)| get(theirs).is_some())
        .map(|(theirs, ours)| (ours.to_string(), theirs.to_string()))
        .collect();
    Ok(Mapped {
        map: out,
        notes,
        renamed,
    })
}

fn put(out: &mut Mapping, key: &str, value: Value) {
    out.insert(Value::String(key.into()), value);
}
