//! Checkpoints: `output_dir/checkpoint-<step>/` holds the adapter (PEFT files), the optimizer
//! moments (`optimizer.safetensors`) and `trainer_state.json`. Resuming reloads all three and
//! continues with the same data order, so a resumed run takes the same steps as an unbroken one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use temper_core::Backend;
use temper_model::safetensors_dir::SafetensorsDir;
use temper_model::{adapter, LoraParams, ModelConfig};

use crate::error::{io_err, Result, TrainError};
use crate::optimizer::{AdamW, AdamWConfig};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub total_steps: u64,
    pub seed: u64,
    /// A digest of the settings that decide the data order; resuming with other values is refused.
    pub data_fingerprint: String,
}

pub fn checkpoint_dir(output_dir: &Path, step: u64) -> PathBuf {
    output_dir.join(format!("checkpoint-{step}"))
}

/// Writes a checkpoint. The folder is written under a temporary name and renamed, so an
/// interrupted save never leaves a checkpoint that looks complete.
pub fn save<B: Backend>(
    be: &B,
    output_dir: &Path,
    lora: &LoraParams<B>,
    opt: &AdamW<B>,
    state: &TrainerState,
    base_model: &str,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(output_dir, state.step);
    let tmp = output_dir.join(format!(".checkpoint-{}.partial", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    adapter::save(be, lora, base_model, &tmp)?;

    let mut host: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, p) in lora.params.iter().enumerate() {
        let (m, v) = opt.moments_of(be, i)?;
        for (prefix, values) in [("exp_avg", m), ("exp_avg_sq", v)] {
            let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            host.push((format!("{prefix}.{}", p.key), p.shape.to_vec(), bytes));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = host
        .iter()
        .map(|(k, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| TrainError::Checkpoint {
                    path: tmp.clone(),
                    msg: e.to_string(),
                })
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [
        ("optimizer_step".to_string(), opt.step.to_string()),
        ("beta1".to_string(), opt.config.beta1.to_string()),
        ("beta2".to_string(), opt.config.beta2.to_string()),
        ("eps".to_string(), opt.config.eps.to_string()),
        (
            "weight_decay".to_string(),
            opt.config.weight_decay.to_string(),
        ),
    ]
    .into();
    let bytes =
        safetensors::tensor::serialize(views, Some(meta)).map_err(|e| TrainError::Checkpoint {
            path: tmp.clone(),
            msg: e.to_string(),
        })?;
    let opt_path = tmp.join(OPTIMIZER_FILE);
    std::fs::write(&opt_path, bytes).map_err(io_err(&opt_path))?;
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|e| TrainError::Checkpoint {
        path: state_path.clone(),
        msg: e.to_string(),
    })?;
    std::fs::write(&state_path, text).map_err(io_err(&state_path))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io_err(&dir))?;
    Ok(dir)
}

/// The newest complete `checkpoint-<step>` folder under `output_dir`.
pub fn latest(output_dir: &Path) -> Result<Option<PathBuf>> {
    if !output_dir.exists() {
        return Ok(None);
    }
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(output_dir).map_err(io_err(output_dir))? {
        let entry = entry.map_err(io_err(output_dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if entry.path().join(STATE_FILE).exists()
                && best.as_ref().is_none_or(|(b, _)| step > *b)
            {
                best = Some((step, entry.path()));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Everything a checkpoint restores.
pub struct Restored<B: Backend> {
    pub lora: LoraParams<B>,
    pub opt: AdamW<B>,
    pub state: TrainerState,
}

pub fn load<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    dir: &Path,
    opt_config: AdamWConfig,
) -> Result<Restored<B>> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io_err(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: state_path.clone(),
        msg: format!("not a trainer state: {e}"),
    })?;
    let lora = adapter::load(be, cfg, dir)?;
    let mut opt = AdamW::new(be, &lora, opt_config)?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let st = SafetensorsDir::open_files(dir, std::slice::from_ref(&opt_path))?;
    for (i, p) in lora.params.iter().enumerate() {
        let shape = p.shape.to_vec();
        let m = st.read_shaped(&format!("exp_avg.{}", p.key), &shape)?.data;
        let v = st
            .read_shaped(&format!("exp_avg_sq.{}", p.key), &shape)?
            .data;
        opt.set_moments(be, i, &m, &v)?;
    }
    opt.step = state.step;
    Ok(Restored { lora, opt, state })
}
