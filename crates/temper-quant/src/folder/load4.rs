//! [`load_4bit_folder`]: the 4-bit weights of a folder in bitsandbytes' layout (made by
//! `temper quantize`, or by transformers + bitsandbytes `save_pretrained`), as they are
//! stored: no requantisation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::SafeTensors;

use super::shards::{weight_files, Shard};
use crate::error::{io_err, QuantError, Result};
use crate::quant_state::{QuantState, TensorRef};

/// Every 4-bit weight of the folder `dir`, by weight name (e.g.
/// `model.layers.0.self_attn.q_proj.weight`). The other tensors (embeddings, norms, lm_head)
/// are ordinary bf16 / fp16 tensors in the same files.
pub fn load_4bit_folder(dir: &Path) -> Result<BTreeMap<String, QuantState>> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| QuantError::Json {
            path: cfg_path.clone(),
            what: "a model config",
            source,
        })?;
    let q = config
        .get("quantization_config")
        .ok_or_else(|| QuantError::Folder {
            path: cfg_path.clone(),
            msg: "has no quantization_config: not a 4-bit model; make one with \
                  `temper quantize MODEL_DIR --out DIR`"
                .into(),
        })?;
    let method = q.get("quant_method").and_then(|m| m.as_str());
    let four_bit = q.get("load_in_4bit").and_then(|b| b.as_bool()) == Some(true)
        || q.get("_load_in_4bit").and_then(|b| b.as_bool()) == Some(true);
    if method != Some("bitsandbytes") || !four_bit {
        return Err(QuantError::Folder {
            path: cfg_path,
            msg: format!(
                "quantization_config is {q}; temper reads bitsandbytes 4-bit models \
                 (quant_method \"bitsandbytes\", load_in_4bit true)"
            ),
        });
    }

    let (files, _) = weight_files(dir)?;
    let shards: Vec<Shard> = files
        .iter()
        .map(|f| Shard::open(f))
        .collect::<Result<_>>()?;
    let tensors: Vec<SafeTensors<'_>> =
        shards.iter().map(|s| s.tensors()).collect::<Result<_>>()?;
    let mut where_is: HashMap<String, usize> = HashMap::new();
    for (i, st) in tensors.iter().enumerate() {
        for name in st.names() {
            where_is.insert(name.to_string(), i);
        }
    }
    let get = |name: &str| -> Option<TensorRef<'_>> {
        let &i = where_is.get(name)?;
        let v = tensors[i].tensor(name).ok()?;
        Some(TensorRef {
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: v.data(),
        })
    };

    let mut out = BTreeMap::new();
    for name in where_is.keys() {
        let Some((weight, _)) = name.split_once(".quant_state.bitsandbytes__") else {
            continue;
        };
        let qs = QuantState::from_tensors(dir, weight, get)?;
        out.insert(weight.to_string(), qs);
    }
    if out.is_empty() {
        return Err(QuantError::Folder {
            path: dir.to_path_buf(),
            msg: "config.json says 4-bit, but no tensor has a `.quant_state.bitsandbytes__nf4` \
                  (or __fp4) companion; the weight files do not match the config"
                .into(),
        });
    }
    Ok(out)
}
