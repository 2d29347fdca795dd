//! Checkpoints: `output_dir/checkpoint-<step>/` holds the adapter (PEFT files), the optimizer
//! moments (`optimizer.safetensors`) and `trainer_state.json`. Resuming reloads all three and
//! continues with the same data order, so a resumed run takes the same steps as an unbroken one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use temper_core::Backend;
use temper_model::{adapter, LoraParams, ModelConfig};
use temper_quant::state8::{State8, BLOCKSIZE};
use temper_quant::{signed_map, unsigned_map};

use crate::error::{io_err, Result, TrainError};
use crate::optimizer::{AdamW, AdamWConfig};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// In `optimizer.safetensors` with 8-bit moments: the 256 values the first moments' codes
/// index (bitsandbytes' signed dynamic map), and the second moments' (the unsigned one).
/// Each 8-bit tensor's moments are `exp_avg_codes.<key>` (u8, the parameter's shape) with
/// `exp_avg_absmax.<key>` (f32, one per block of 256), and the same for `exp_avg_sq`; f32
/// moments are `exp_avg.<key>` and `exp_avg_sq.<key>`.
pub const MAP_M: &str = "exp_avg_map";
pub const MAP_V: &str = "exp_avg_sq_map";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    pub total_steps: u64,
    pub seed: u64,
    /// A digest of the settings that decide the data order; resuming with other values is refused.
    pub data_fingerprint: String,
    /// A hash of the tokenised rows trained on (absent in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hash: Option<String>,
    /// The base model's fingerprint (config, tensor names and shapes, sampled bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    /// The optimizer and schedule settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<String>,
    /// The step with the lowest eval loss so far, and that loss (when evaluating in training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_eval_loss: Option<f64>,
    /// Evaluations since the best one (for `early_stopping_patience`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub evals_since_best: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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

    let mut host: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let f32_bytes =
        |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let mut any_8bit = false;
    for (i, p) in lora.params.iter().enumerate() {
        if let Some((m, v)) = opt.state8_of(be, i)? {
            // bitsandbytes' state1/absmax1 and state2/absmax2.
            any_8bit = true;
            for (prefix, (codes, absmax)) in [("exp_avg", m), ("exp_avg_sq", v)] {
                host.push((
                    format!("{prefix}_codes.{}", p.key),
                    Dtype::U8,
                    p.shape.to_vec(),
                    codes,
                ));
                host.push((
                    format!("{prefix}_absmax.{}", p.key),
                    Dtype::F32,
                    vec![absmax.len()],
                    f32_bytes(&absmax),
                ));
            }
            continue;
        }
        let (m, v) = opt.moments_of(be, i)?;
        for (prefix, values) in [("exp_avg", m), ("exp_avg_sq", v)] {
            host.push((
                format!("{prefix}.{}", p.key),
                Dtype::F32,
                p.shape.to_vec(),
                f32_bytes(&values),
            ));
        }
    }
    if any_8bit {
        // The code values, so the file reads without temper (bitsandbytes' qmap1 / qmap2).
        host.push((MAP_M.into(), Dtype::F32, vec![256], f32_bytes(signed_map())));
        host.push((
            MAP_V.into(),
            Dtype::F32,
            vec![256],
            f32_bytes(unsigned_map()),
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = host
        .iter()
        .map(|(k, dt, s, b)| {
            TensorView::new(*dt, s.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| TrainError::Checkpoint {
                    path: tmp.clone(),
                    msg: e.to_string(),
                })
        })
        .collect::<Result<_>>()?;
    let mut meta: HashMap<String, String> = [
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
    if any_8bit {
        meta.insert("optim_bits".into(), "8".into());
        meta.insert("blocksize".into(), BLOCKSIZE.to_string());
        meta.insert("min_8bit_size".into(), opt.config.min_8bit_size.to_string());
    }
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

/// The complete `checkpoint-<step>` folders under `output_dir`, oldest first.
pub fn list(output_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    if !output_dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(output_dir).map_err(io_err(output_dir))? {
        let entry = entry.map_err(io_err(output_dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if entry.path().join(STATE_FILE).exists() {
                out.push((step, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `save_total_limit`: deletes all but the newest `limit` checkpoints, keeping the one of step
/// `keep` too (the best, when it is tracked). Returns the folders deleted.
pub fn rotate(output_dir: &Path, limit: usize, keep: Option<u64>) -> Result<Vec<PathBuf>> {
    let all = list(output_dir)?;
    let cut = all.len().saturating_sub(limit.max(1));
    let mut deleted = Vec::new();
    for (step, dir) in &all[..cut] {
        if Some(*step) == keep {
            continue;
        }
        std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
        deleted.push(dir.clone());
    }
    Ok(deleted)
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
    let bytes = std::fs::read(&opt_path).map_err(io_err(&opt_path))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| TrainError::Checkpoint {
        path: opt_path.clone(),
        msg: e.to_string(),
    })?;
    let file = OptimizerFile {
        st: &st,
        path: &opt_path,
    };
    for (i, p) in lora.params.iter().enumerate() {
        let shape = p.shape.to_vec();
        if file.contains(&format!("exp_avg_codes.{}", p.key)) {
            let numel = shape.iter().product::<usize>();
            let blocks = numel.div_ceil(BLOCKSIZE);
            let read = |prefix: &str| -> Result<(Vec<u8>, Vec<f32>)> {
                Ok((
                    file.u8s(&format!("{prefix}_codes.{}", p.key), &shape)?,
                    file.f32s(&format!("{prefix}_absmax.{}", p.key), &[blocks])?,
                ))
            };
            let (m, v) = (read("exp_avg")?, read("exp_avg_sq")?);
            if !opt.set_state8(be, i, &m, &v)? {
                // This run keeps the tensor's moments in f32: dequantise with the file's maps.
                let map = |name: &str| -> Result<[f32; 256]> {
                    let values = file.f32s(name, &[256])?;
                    let mut out = [0.0; 256];
                    out.copy_from_slice(&values);
                    Ok(out)
                };
                let m = State8::from_parts(m.0, m.1, &map(MAP_M)?)?.dequantize();
                let v = State8::from_parts(v.0, v.1, &map(MAP_V)?)?.dequantize();
                opt.set_moments(be, i, &m, &v)?;
            }
        } else {
            let m = file.f32s(&format!("exp_avg.{}", p.key), &shape)?;
            let v = file.f32s(&format!("exp_avg_sq.{}", p.key), &shape)?;
            opt.set_moments(be, i, &m, &v)?;
        }
    }
    opt.step = state.step;
    Ok(Restored { lora, opt, state })
}

/// Typed reads from `optimizer.safetensors`, errors naming the file.
struct OptimizerFile<'a> {
    st: &'a SafeTensors<'a>,
    path: &'a Path,
}

impl OptimizerFile<'_> {
    fn contains(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    fn bytes(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8]> {
        let err = |msg: String| TrainError::Checkpoint {
            path: self.path.to_path_buf(),
            msg,
        };
        let t = self
            .st
            .tensor(name)
            .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
        if t.dtype() != dtype || t.shape() != shape {
            return Err(err(format!(
                "tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
                t.dtype(),
                t.shape()
            )));
        }
        Ok(t.data())
    }

    fn f32s(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self
            .bytes(name, Dtype::F32, shape)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn u8s(&self, name: &str, shape: &[usize]) -> Result<Vec<u8>> {
        Ok(self.bytes(name, Dtype::U8, shape)?.to_vec())
    }
}
