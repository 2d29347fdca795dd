//! `quantize_folder`: a bf16 / fp16 / f32 Hugging Face folder to bitsandbytes' 4-bit layout,
//! shard by shard (peak host memory about one shard), the same tensors and bytes as
//! transformers' `from_pretrained(quantization_config=BitsAndBytesConfig(load_in_4bit=True,
//! ...))` + `save_pretrained` on the CPU.
//!
//! transformers replaces every `nn.Linear` but the output head with a 4-bit layer; in a
//! Llama-family checkpoint those are the `*_proj` weights of the decoder layers (q, k, v, o,
//! gate, up, down). Embeddings, norms, biases and `lm_head` are copied unchanged. Output
//! shards keep the input's file names (one output shard per input shard).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::config::{quantization_config, ComputeDtype};
use super::shards::{weight_files, Shard, INDEX, SINGLE};
use crate::codes::QuantType;
use crate::error::{check_blocksize, io_err, QuantError, Result};
use crate::quant_state::{OwnedTensor, QuantState};
use temper_pyjson::dumps_sorted_indent2;

/// What to quantise and how.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub quant_type: QuantType,
    /// Quantise the absmax too (QLoRA's double quantisation, ~0.37 bits per parameter saved).
    pub double_quant: bool,
    /// Elements per absmax block: a power of two from 32 to 4096.
    pub blocksize: usize,
    /// Written to `bnb_4bit_compute_dtype`.
    pub compute_dtype: ComputeDtype,
    /// Write into a non-empty output folder (its old weight files are removed first).
    pub force: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            quant_type: QuantType::Nf4,
            double_quant: false,
            blocksize: 64,
            compute_dtype: ComputeDtype::BFloat16,
            force: false,
        }
    }
}

/// What `quantize_folder` did.
#[derive(Clone, Debug)]
pub struct QuantizeSummary {
    /// Weights quantised, and their parameters.
    pub quantized: usize,
    pub quantized_params: usize,
    /// Tensors copied unchanged.
    pub copied: usize,
    pub shards: usize,
    /// Bytes of tensor data read and written.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Whether transformers' bitsandbytes integration quantises this tensor of a Llama-family
/// checkpoint: a 2-D `*_proj.weight` inside `layers.N`.
pub fn is_quantized_linear(name: &str, shape: &[usize]) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    let in_layer = parts
        .windows(2)
        .any(|w| w[0] == "layers" && w[1].parse::<usize>().is_ok());
    shape.len() == 2
        && in_layer
        && parts.len() >= 2
        && parts[parts.len() - 1] == "weight"
        && parts[parts.len() - 2].ends_with("_proj")
}

/// Files of a model folder that are weights (not copied to the output).
fn is_weight_file(name: &str) -> bool {
    name == INDEX
        || [
            ".safetensors",
            ".bin",
            ".pt",
            ".pth",
            ".gguf",
            ".h5",
            ".msgpack",
            ".ckpt",
        ]
        .iter()
        .any(|ext| name.ends_with(ext))
}

fn folder_err(path: &Path, msg: impl Into<String>) -> QuantError {
    QuantError::Folder {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Reads config.json of `src`, refusing a folder that is already quantised.
fn read_source_config(src: &Path) -> Result<serde_json::Value> {
    if !src.exists() {
        return Err(folder_err(
            src,
            "does not exist; give a Hugging Face model folder",
        ));
    }
    if !src.is_dir() {
        return Err(folder_err(
            src,
            "is not a folder; give a Hugging Face model folder (config.json + safetensors)",
        ));
    }
    let path = src.join("config.json");
    if !path.exists() {
        return Err(folder_err(
            src,
            "has no config.json: not a Hugging Face model folder",
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| QuantError::Json {
            path: path.clone(),
            what: "a model config",
            source,
        })?;
    if let Some(q) = config.get("quantization_config") {
        let method = q
            .get("quant_method")
            .and_then(|m| m.as_str())
            .unwrap_or("unknown");
        return Err(folder_err(
            &path,
            format!(
                "the model is already quantised (quantization_config, quant_method `{method}`); \
                 quantise the original bf16/fp16 model instead"
            ),
        ));
    }
    Ok(config)
}

/// Makes `out` ready: created if absent; if it holds files, refused unless `force`, and then
/// its old weight files are removed so no stale shard stays next to the new ones.
fn prepare_out(src: &Path, out: &Path, force: bool) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            return Err(folder_err(out, "exists and is not a folder"));
        }
        let same = match (src.canonicalize(), out.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            return Err(folder_err(
                out,
                "is the input folder; write the quantised model somewhere else",
            ));
        }
        let entries: Vec<PathBuf> = std::fs::read_dir(out)
            .map_err(io_err(out))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        if !entries.is_empty() && !force {
            return Err(folder_err(
                out,
                "exists and is not empty; choose another --out or pass --force to replace its \
                 model files",
            ));
        }
        for p in entries {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if p.is_file() && is_weight_file(name) {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
    }
    std::fs::create_dir_all(out).map_err(io_err(out))
}

/// f32 values of a bf16 / fp16 / f32 tensor (exact), and its torch dtype name.
fn to_f32(dtype: Dtype, data: &[u8]) -> Option<(Vec<f32>, &'static str)> {
    match dtype {
        Dtype::BF16 => Some((
            data.chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            "bfloat16",
        )),
        Dtype::F16 => Some((
            data.chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            "float16",
        )),
        Dtype::F32 => Some((
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            "float32",
        )),
        _ => None,
    }
}

/// Quantises the model in `src` into `out`. See the module documentation.
pub fn quantize_folder(src: &Path, out: &Path, opts: &QuantizeOptions) -> Result<QuantizeSummary> {
    quantize_folder_with(src, out, opts, |_, _, _| {})
}

/// [`quantize_folder`], calling `on_shard(done, total, file)` after each shard is written.
pub fn quantize_folder_with(
    src: &Path,
    out: &Path,
    opts: &QuantizeOptions,
    mut on_shard: impl FnMut(usize, usize, &Path),
) -> Result<QuantizeSummary> {
    check_blocksize("quantize_folder", opts.blocksize)?;
    let mut config = read_source_config(src)?;
    let (files, sharded) = weight_files(src)?;
    prepare_out(src, out, opts.force)?;

    let mut summary = QuantizeSummary {
        quantized: 0,
        quantized_params: 0,
        copied: 0,
        shards: files.len(),
        bytes_in: 0,
        bytes_out: 0,
    };
    let mut weight_map: BTreeMap<String, String> = BTreeMap::new();
    for (i, file) in files.iter().enumerate() {
        let shard = Shard::open(file)?;
        let st = shard.tensors()?;
        let out_name = if sharded {
            file.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(SINGLE)
                .to_string()
        } else {
            SINGLE.to_string()
        };
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();

        let mut owned: Vec<OwnedTensor> = Vec::new();
        let mut borrowed: Vec<(String, Dtype, Vec<usize>, &[u8])> = Vec::new();
        for name in names {
            let view = st.tensor(&name).map_err(|e| QuantError::Safetensors {
                path: file.clone(),
                msg: e.to_string(),
            })?;
            summary.bytes_in += view.data().len() as u64;
            if name.ends_with(".absmax") || name.contains(".quant_state.") || name.ends_with(".SCB")
            {
                return Err(folder_err(
                    file,
                    format!(
                        "holds `{name}`: the model is already quantised; quantise the original \
                         bf16/fp16 model instead"
                    ),
                ));
            }
            if is_quantized_linear(&name, view.shape()) {
                let (values, dtype) =
                    to_f32(view.dtype(), view.data()).ok_or_else(|| QuantError::Tensor {
                        path: file.clone(),
                        name: name.clone(),
                        msg: format!(
                            "is {:?}; temper quantises BF16, F16 and F32 weights",
                            view.dtype()
                        ),
                    })?;
                let qs = QuantState::quantize(
                    &values,
                    view.shape(),
                    dtype,
                    opts.blocksize,
                    opts.quant_type,
                    opts.double_quant,
                )
                .map_err(|e| QuantError::Tensor {
                    path: file.clone(),
                    name: name.clone(),
                    msg: e.to_string(),
                })?;
                summary.quantized += 1;
                summary.quantized_params += values.len();
                owned.extend(qs.tensors(&name));
            } else {
                summary.copied += 1;
                borrowed.push((name, view.dtype(), view.shape().to_vec(), view.data()));
            }
        }

        let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
        let tensor_err = |name: &str, e: safetensors::SafeTensorError| QuantError::Tensor {
            path: out.join(&out_name),
            name: name.to_string(),
            msg: e.to_string(),
        };
        for t in &owned {
            let v = TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map_err(|e| tensor_err(&t.name, e))?;
            views.push((t.name.clone(), v));
        }
        for (name, dtype, shape, data) in &borrowed {
            let v =
                TensorView::new(*dtype, shape.clone(), data).map_err(|e| tensor_err(name, e))?;
            views.push((name.clone(), v));
        }
        for (name, v) in &views {
            summary.bytes_out += v.data().len() as u64;
            weight_map.insert(name.clone(), out_name.clone());
        }
        let path = out.join(&out_name);
        let tmp = path.with_extension("tmp");
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::tensor::serialize_to_file(views, Some(meta), &tmp).map_err(|e| {
            QuantError::Safetensors {
                path: tmp.clone(),
                msg: e.to_string(),
            }
        })?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        on_shard(i + 1, files.len(), &path);
    }
    if summary.quantized == 0 {
        return Err(folder_err(
            src,
            "has no decoder-layer `*_proj.weight` matrices to quantise (temper quantises \
             Llama-family checkpoints: model.layers.N.{self_attn,mlp}.*_proj.weight)",
        ));
    }

    if sharded {
        let index = serde_json::json!({
            "metadata": {"total_size": summary.bytes_out},
            "weight_map": weight_map,
        });
        write_atomic(
            &out.join(INDEX),
            (dumps_sorted_indent2(&index) + "\n").as_bytes(),
        )?;
    }

    if let Some(obj) = config.as_object_mut() {
        obj.insert(
            "quantization_config".into(),
            quantization_config(opts.quant_type, opts.double_quant, opts.compute_dtype),
        );
    }
    write_atomic(
        &out.join("config.json"),
        (dumps_sorted_indent2(&config) + "\n").as_bytes(),
    )?;

    // Tokenizer files, generation_config.json, chat templates, README: everything else.
    for entry in std::fs::read_dir(src).map_err(io_err(src))? {
        let entry = entry.map_err(io_err(src))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if !path.is_file() || name == "config.json" || is_weight_file(&name) {
            continue;
        }
        let dest = out.join(&name);
        std::fs::copy(&path, &dest).map_err(io_err(&dest))?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_tensors_are_quantised() {
        let yes = [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.12.mlp.down_proj.weight",
            "model.layers.3.self_attn.o_proj.weight",
        ];
        for n in yes {
            assert!(is_quantized_linear(n, &[8, 8]), "{n}");
        }
        let no: [(&str, &[usize]); 6] = [
            ("model.layers.0.self_attn.q_proj.bias", &[8]),
            ("model.layers.0.input_layernorm.weight", &[8]),
            ("model.embed_tokens.weight", &[8, 8]),
            ("lm_head.weight", &[8, 8]),
            ("model.norm.weight", &[8]),
            ("model.layers.0.mlp.up_proj.weight", &[64]),
        ];
        for (n, s) in no {
            assert!(!is_quantized_linear(n, s), "{n}");
        }
    }
}
