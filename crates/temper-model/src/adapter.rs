//! PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`, read and written
//! with PEFT's field and key names so PEFT, transformers and vLLM load temper's adapters and
//! temper loads theirs.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use temper_core::Backend;

use crate::config::ModelConfig;
use crate::error::{io_err, ModelError, Result};
use crate::lora::{LoraConfig, LoraParams, Target};
use crate::safetensors_dir::SafetensorsDir;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// adapter_config.json, PEFT's `LoraConfig` as it serialises it.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdapterConfigFile {
    pub peft_type: String,
    pub task_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f32,
    #[serde(default)]
    pub lora_dropout: f32,
    pub target_modules: serde_json::Value,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
    #[serde(default = "yes")]
    pub init_lora_weights: serde_json::Value,
    #[serde(default)]
    pub rank_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    pub layers_pattern: Option<serde_json::Value>,
    #[serde(default)]
    pub modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    pub revision: Option<String>,
}

fn bias_none() -> String {
    "none".into()
}
fn yes() -> serde_json::Value {
    serde_json::Value::Bool(true)
}

impl AdapterConfigFile {
    pub fn from_lora(lora: &LoraConfig, base_model: &str) -> Self {
        let mut targets: Vec<&str> = lora.targets.iter().map(|t| t.name()).collect();
        targets.sort();
        AdapterConfigFile {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r: lora.r,
            lora_alpha: lora.alpha,
            lora_dropout: lora.dropout,
            target_modules: serde_json::json!(targets),
            bias: "none".into(),
            use_rslora: lora.use_rslora,
            use_dora: false,
            fan_in_fan_out: false,
            base_model_name_or_path: Some(base_model.to_string()),
            inference_mode: true,
            init_lora_weights: yes(),
            rank_pattern: Default::default(),
            alpha_pattern: Default::default(),
            layers_to_transform: None,
            layers_pattern: None,
            modules_to_save: None,
            revision: None,
        }
    }

    /// The adapter settings temper can run, or an error naming what it cannot.
    pub fn to_lora(&self, path: &Path) -> Result<LoraConfig> {
        let bad = |msg: String| ModelError::Config {
            path: path.to_path_buf(),
            msg,
        };
        if self.peft_type != "LORA" {
            return Err(bad(format!(
                "peft_type is `{}`; temper loads LORA adapters",
                self.peft_type
            )));
        }
        if self.use_dora {
            return Err(bad(
                "use_dora is true; temper does not run DoRA adapters".into()
            ));
        }
        if self.bias != "none" {
            return Err(bad(format!(
                "bias is `{}`; temper supports bias \"none\"",
                self.bias
            )));
        }
        if self.fan_in_fan_out {
            return Err(bad(
                "fan_in_fan_out is true (GPT-2 style Conv1D); not a Llama-family adapter".into(),
            ));
        }
        if !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty() {
            return Err(bad("rank_pattern / alpha_pattern are not supported: all adapters must share r and lora_alpha".into()));
        }
        if self
            .layers_to_transform
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return Err(bad(
                "layers_to_transform is not supported: adapters must cover every layer".into(),
            ));
        }
        if self.modules_to_save.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(bad(
                "modules_to_save is not supported: temper trains LoRA tensors only".into(),
            ));
        }
        let targets = parse_targets(&self.target_modules).map_err(bad)?;
        Ok(LoraConfig {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            use_rslora: self.use_rslora,
            targets,
        })
    }
}

/// `target_modules` as PEFT accepts it: a list of names, one name, or "all-linear".
pub fn parse_targets(v: &serde_json::Value) -> std::result::Result<Vec<Target>, String> {
    let names: Vec<String> = match v {
        serde_json::Value::String(s) if s == "all-linear" => {
            return Ok(Target::ALL.to_vec());
        }
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("target_modules entry {x} is not a string"))
            })
            .collect::<std::result::Result<_, _>>()?,
        other => {
            return Err(format!(
                "target_modules must be a list of names, got {other}"
            ))
        }
    };
    let mut targets = Vec::new();
    for name in names {
        // PEFT matches by suffix: "self_attn.q_proj" names q_proj too.
        let leaf = name.rsplit('.').next().unwrap_or(&name);
        let t = Target::parse(leaf).ok_or_else(|| {
            format!(
                "target module `{name}` is not a linear layer temper adapts; choose from q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj) or all-linear"
            )
        })?;
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    targets.sort();
    Ok(targets)
}

/// Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` (f32 tensors).
pub fn save<B: Backend>(be: &B, lora: &LoraParams<B>, base_model: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cfg = AdapterConfigFile::from_lora(&lora.config, base_model);
    let cfg_path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&cfg).map_err(|source| ModelError::Json {
        path: cfg_path.clone(),
        what: "an adapter config",
        source,
    })?;
    write_atomic(&cfg_path, text.as_bytes())?;

    let mut host: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(lora.params.len());
    for p in &lora.params {
        let values = be.download(&p.value)?;
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(ModelError::Adapter(format!(
                "refusing to write {}: LoRA weight `{}` holds a non-finite value ({}) at index {i}",
                dir.display(),
                p.key,
                values[i]
            )));
        }
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        host.push((p.key.clone(), p.shape.to_vec(), bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = host
        .iter()
        .map(|(k, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| ModelError::Adapter(format!("{k}: {e}")))
        })
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| ModelError::Adapter(e.to_string()))?;
    write_atomic(&dir.join(WEIGHTS_FILE), &bytes)
}

/// Writes through a temporary file and a rename, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Reads adapter_config.json alone.
pub fn read_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let f: AdapterConfigFile = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.clone(),
        what: "a PEFT adapter config",
        source,
    })?;
    f.to_lora(&path)
}

/// Loads an adapter folder written by PEFT or by temper onto `be`.
pub fn load<B: Backend>(be: &B, cfg: &ModelConfig, dir: &Path) -> Result<LoraParams<B>> {
    let lora = read_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    if !path.exists() {
        return Err(ModelError::Config {
            path: path.clone(),
            msg: "missing: an adapter folder needs adapter_model.safetensors (adapter_model.bin is not read; re-save with safe_serialization=True)".into(),
        });
    }
    let st = SafetensorsDir::open_files(dir, std::slice::from_ref(&path))?;
    // PEFT writes keys without the adapter name; some tools keep `.default`.
    let lookup: HashMap<String, String> = st
        .names()
        .map(|k| {
            (
                k.replace(".lora_A.default.", ".lora_A.")
                    .replace(".lora_B.default.", ".lora_B."),
                k.to_string(),
            )
        })
        .collect();
    let mut used = 0usize;
    let params = LoraParams::build(be, cfg, &lora, |key, shape, _| {
        let stored = lookup.get(key).ok_or_else(|| ModelError::MissingTensor {
            dir: path.clone(),
            name: key.to_string(),
            hint: String::new(),
        })?;
        used += 1;
        Ok(st.read_shaped(stored, &shape)?.data)
    })?;
    if used != lookup.len() {
        let expected: std::collections::HashSet<&str> =
            params.params.iter().map(|p| p.key.as_str()).collect();
        let extra: Vec<&String> = lookup
            .keys()
            .filter(|k| !expected.contains(k.as_str()))
            .take(3)
            .collect();
        return Err(ModelError::Config {
            path,
            msg: format!("holds tensors temper does not recognise (e.g. {extra:?}); is this adapter for another architecture?"),
        });
    }
    Ok(params)
}
