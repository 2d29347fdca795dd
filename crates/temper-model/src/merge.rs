//! Folding a LoRA adapter into its base model: a Hugging Face folder whose linear weights are
//! `W + s * B A` (s = alpha / r, rsLoRA alpha / sqrt(r)), loadable by transformers and vLLM
//! with no adapter and no temper.
//!
//! Each merged weight is what PEFT's `merge_and_unload` gives on the CPU with the base loaded
//! in the output dtype and the adapter in f32 (PEFT's default `autocast_adapter_dtype`): the
//! delta `(B @ A) * s` in f32, added to the weight in f32, rounded once to the output dtype.
//! A 4-bit or 8-bit base (a bitsandbytes folder, or quantised on load as QLoRA trained
//! against it) is dequantised to f32 first, then merged the same way: the merged model is
//! the one the adapter was trained with, in 16 or 32 bits.
//!
//! Memory: tensors are read one at a time from the mapped files (their pages released once
//! read) and streamed into the output shards, so host memory holds about one tensor in f32
//! plus the adapter, whatever the model's size.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safetensors::Dtype;
use temper_core::{Backend, CpuBackend, DType};
use temper_quant::{read_int8, QuantState};

use crate::config::ModelConfig;
use crate::error::{io_err, ModelError, Result};
use crate::lora::{LoraConfig, Target};
use crate::quantized::{to_int8, LoadOptions};
use crate::safetensors_dir::SafetensorsDir;
use crate::sharded_out::{plan_shards, write_shards, OutTensor, INDEX_FILE, SINGLE_FILE};

/// transformers 4's default `max_shard_size` (transformers 5 writes 50 GB shards).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// How to merge.
#[derive(Clone, Debug)]
pub struct MergeOptions {
    /// Output storage type; None: the base's (config.json `dtype` / `torch_dtype`), else
    /// bfloat16.
    pub dtype: Option<DType>,
    pub max_shard_bytes: u64,
    /// Quantise the base's linear layers on load (4 or 8 bits) and merge into their
    /// dequantised values: the weights a QLoRA run trained against. A bitsandbytes folder is
    /// read as stored whatever this says.
    pub load: LoadOptions,
    /// Write into a non-empty output folder (its old weight files are removed first).
    pub force: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            dtype: None,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            load: LoadOptions::default(),
            force: false,
        }
    }
}

/// What [`merge_folder`] did.
#[derive(Clone, Debug)]
pub struct MergeSummary {
    pub dtype: DType,
    pub lora: LoraConfig,
    /// Weights that received a LoRA delta.
    pub merged: usize,
    pub tensors: usize,
    pub shards: usize,
    pub bytes: u64,
    pub parameters: u64,
    /// The base's quantisation, when its linear weights were dequantised (e.g. "nf4 with
    /// double quantisation, quantised on load" or "nf4, bitsandbytes folder").
    pub quantized_base: Option<String>,
    /// max over merged weights of max |delta| / max |W|: how large the adapter's change is
    /// beside the weight it changes.
    pub max_delta_ratio: f64,
    /// Quantised on load only: max over linear weights of max |W - dequant(quant(W))| /
    /// max |W|, how far the merged model's base is from the original weights.
    pub max_quant_error: Option<f64>,
}

/// How a linear weight of the base is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    /// A float tensor (F32 / BF16 / F16), read as it is.
    Float,
    /// bitsandbytes 4-bit (NF4 / FP4) with its companion tensors.
    FourBit,
    /// bitsandbytes LLM.int8 codes with `.SCB` row scales.
    Int8,
}

/// One tensor of the output, where it comes from, and its LoRA target if it has one.
struct Planned {
    out: OutTensor,
    source: Source,
    /// (layer, target) for the 7 linear weights of each decoder layer.
    linear: Option<(usize, Target)>,
}

/// Suffixes of the companion tensors bitsandbytes saves beside a 4-bit or 8-bit weight.
fn is_companion(name: &str) -> bool {
    [
        ".absmax",
        ".quant_map",
        ".nested_absmax",
        ".nested_quant_map",
        ".SCB",
        ".weight_format",
    ]
    .iter()
    .any(|s| name.ends_with(s))
        || name.contains(".quant_state.bitsandbytes__")
}

/// Position of a tensor in transformers' `state_dict` order for a Llama-family model:
/// embeddings, each layer (attention q, k, v, o, MLP gate, up, down, then the two norms),
/// the final norm, the head; anything else after, by name.
fn state_dict_order(name: &str) -> (u8, usize, usize, String) {
    const IN_LAYER: [&str; 9] = [
        "self_attn.q_proj.",
        "self_attn.k_proj.",
        "self_attn.v_proj.",
        "self_attn.o_proj.",
        "mlp.gate_proj.",
        "mlp.up_proj.",
        "mlp.down_proj.",
        "input_layernorm.",
        "post_attention_layernorm.",
    ];
    if name == "model.embed_tokens.weight" {
        return (0, 0, 0, String::new());
    }
    if let Some(rest) = name.strip_prefix("model.layers.") {
        if let Some((l, inner)) = rest.split_once('.') {
            if let Ok(l) = l.parse::<usize>() {
                let sub = IN_LAYER
                    .iter()
                    .position(|p| inner.starts_with(p))
                    .unwrap_or(IN_LAYER.len());
                // weight before bias, as modules register them
                let tail = inner.replace(".weight", ".0weight");
                return (1, l, sub, tail);
            }
        }
    }
    match name {
        "model.norm.weight" => (2, 0, 0, String::new()),
        "lm_head.weight" => (3, 0, 0, String::new()),
        _ => (4, 0, 0, name.to_string()),
    }
}

/// The linear layer a tensor name is the weight of, if any.
fn linear_of(name: &str, cfg: &ModelConfig) -> Option<(usize, Target)> {
    let layers = cfg.layers;
    let rest = name.strip_prefix("model.layers.")?;
    let (l, inner) = rest.split_once('.')?;
    let l: usize = l.parse().ok()?;
    if l >= layers {
        return None;
    }
    let path = inner.strip_suffix(".weight")?;
    cfg.linears()
        .iter()
        .copied()
        .find(|t| t.path() == path)
        .map(|t| (l, t))
}

fn float_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F16 => Some(DType::F16),
        _ => None,
    }
}

fn read_json(path: &Path, what: &'static str) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// The dtype config.json says the weights are in (`dtype`, or `torch_dtype` before
/// transformers 5).
fn config_dtype(config: &serde_json::Value) -> Option<DType> {
    ["dtype", "torch_dtype"]
        .iter()
        .find_map(|k| config.get(*k)?.as_str()?.parse().ok())
}

/// Files of a model folder that hold weights (not copied to the output).
fn is_weight_file(name: &str) -> bool {
    name == INDEX_FILE
        || name.ends_with(".partial")
        || [
            ".safetensors",
            ".bin",
            ".pt",
            ".pth",
            ".gguf",
            ".h5",
            ".msgpack",
            ".ckpt",
            ".safetensors.index.json",
            ".bin.index.json",
        ]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Makes `out` ready: created if absent; if it holds files, refused unless `force`, and then
/// its old weight files are removed so no stale shard stays beside the new ones.
fn prepare_out(inputs: &[&Path], out: &Path, force: bool) -> Result<()> {
    let bad = |msg: &str| ModelError::Config {
        path: out.to_path_buf(),
        msg: msg.to_string(),
    };
    if out.exists() {
        if !out.is_dir() {
            return Err(bad("exists and is not a folder; choose another --out"));
        }
        let same = |p: &Path| match (p.canonicalize(), out.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if inputs.iter().any(|p| same(p)) {
            return Err(bad(
                "is an input folder; write the merged model somewhere else",
            ));
        }
        let entries: Vec<PathBuf> = std::fs::read_dir(out)
            .map_err(io_err(out))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        if !entries.is_empty() && !force {
            return Err(bad(
                "exists and is not empty; choose another --out, or pass --force to replace its \
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

/// The adapter's A (r, in) and B (out, r) of each adapted linear layer, in f32 on the host.
struct HostAdapter {
    config: LoraConfig,
    /// scale in f32 as PEFT applies it: f64 `lora_alpha / r` (or `/ sqrt(r)`) cast once.
    scale: f32,
    ab: HashMap<(usize, Target), (Vec<f32>, Vec<f32>)>,
}

impl HostAdapter {
    fn load(cfg: &ModelConfig, dir: &Path) -> Result<Self> {
        let be = CpuBackend::new();
        let params = crate::adapter::load(&be, cfg, dir)?;
        let mut ab = HashMap::new();
        for l in 0..cfg.layers {
            for t in cfg.linears().iter().copied() {
                if let Some((a, b)) = params.get(l, t) {
                    ab.insert((l, t), (be.download(&a.value)?, be.download(&b.value)?));
                }
            }
        }
        let c = &params.config;
        let r = c.r as f64;
        let scale = if c.use_rslora {
            c.alpha as f64 / r.sqrt()
        } else {
            c.alpha as f64 / r
        } as f32;
        Ok(HostAdapter {
            config: params.config.clone(),
            scale,
            ab,
        })
    }
}

/// `w += (B @ A) * scale` in f32, as PEFT's `get_delta_weight` (B @ A in f32, then times the
/// scale) and its in-place add: every product summed in order over r with fused
/// multiply-adds, the sum times the scale rounded to f32, then added and rounded to f32.
/// Returns (max |delta|, max |w| before the add).
fn add_delta(w: &mut [f32], a: &[f32], b: &[f32], r: usize, scale: f32) -> (f32, f32) {
    let d_in = a.len() / r;
    w.par_chunks_mut(d_in)
        .zip(b.par_chunks(r))
        .map(|(row, b_row)| {
            let (mut max_d, mut max_w) = (0f32, 0f32);
            for (j, x) in row.iter_mut().enumerate() {
                let mut acc = 0f32;
                for (k, &bk) in b_row.iter().enumerate() {
                    acc = bk.mul_add(a[k * d_in + j], acc);
                }
                let d = acc * scale;
                max_d = max_d.max(d.abs());
                max_w = max_w.max(x.abs());
                *x += d;
            }
            (max_d, max_w)
        })
        .reduce(|| (0.0, 0.0), |p, q| (p.0.max(q.0), p.1.max(q.1)))
}

/// Merges the adapter in `adapter` into the model in `base`, writing a Hugging Face folder to
/// `out`. See the module documentation.
pub fn merge_folder(
    base: &Path,
    adapter: &Path,
    out: &Path,
    opts: &MergeOptions,
) -> Result<MergeSummary> {
    opts.load.check()?;
    let cfg = ModelConfig::from_dir(base)?;
    let config_path = base.join("config.json");
    let mut config = read_json(&config_path, "a model config")?;
    let st = SafetensorsDir::open(base)?;
    let lora = HostAdapter::load(&cfg, adapter)?;

    // Which tensors the base holds and how its linear weights are stored.
    let names: BTreeSet<String> = st.names().map(str::to_string).collect();
    let mut planned: Vec<Planned> = Vec::new();
    let mut stored_quant: Option<String> = None;
    for name in &names {
        if is_companion(name) {
            continue;
        }
        let (dtype, shape) = st.info(name)?;
        let linear = linear_of(name, &cfg);
        let four_bit = ["nf4", "fp4"]
            .iter()
            .find(|q| names.contains(&format!("{name}.quant_state.bitsandbytes__{q}")));
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let (source, shape) = if let Some(q) = four_bit {
            let (d_in, d_out) =
                linear
                    .map(|(_, t)| t.dims(&cfg))
                    .ok_or_else(|| ModelError::Quantize {
                        name: name.clone(),
                        msg: "is stored in 4 bits but is not one of the decoder layers' linear \
                          weights; temper merges Llama-family checkpoints"
                            .into(),
                    })?;
            stored_quant.get_or_insert_with(|| format!("{q}, bitsandbytes folder"));
            (Source::FourBit, vec![d_out, d_in])
        } else if dtype == Dtype::I8 && names.contains(&format!("{prefix}.SCB")) {
            stored_quant.get_or_insert_with(|| "int8, bitsandbytes folder".into());
            (Source::Int8, shape)
        } else if float_dtype(dtype).is_some() {
            (Source::Float, shape)
        } else {
            return Err(ModelError::Dtype {
                name: name.clone(),
                dtype: format!("{dtype:?}"),
                expected: "F32, BF16 and F16 (or bitsandbytes' 4-bit and 8-bit layouts)",
            });
        };
        if let Some((_, t)) = linear {
            let (d_in, d_out) = t.dims(&cfg);
            if shape != [d_out, d_in] {
                return Err(ModelError::Shape {
                    name: name.clone(),
                    got: shape,
                    expected: vec![d_out, d_in],
                });
            }
        }
        planned.push(Planned {
            out: OutTensor {
                name: name.clone(),
                dtype: DType::F32, // set below
                shape,
            },
            source,
            linear,
        });
    }
    for &(l, t) in lora.ab.keys() {
        let name = format!("model.layers.{l}.{}.weight", t.path());
        if !names.contains(&name) {
            return Err(ModelError::MissingTensor {
                dir: base.to_path_buf(),
                name,
                hint: " (the adapter changes it; is the adapter for this model?)".into(),
            });
        }
    }
    let on_load = if stored_quant.is_some() {
        None
    } else if let Some(q) = opts.load.quantize {
        Some(format!(
            "{}{}, quantised on load",
            q.quant_type.name(),
            if q.double_quant {
                " with double quantisation"
            } else {
                ""
            }
        ))
    } else if opts.load.int8 {
        Some("int8, quantised on load".into())
    } else {
        None
    };
    let dtype = opts
        .dtype
        .or_else(|| config_dtype(&config))
        .unwrap_or(DType::BF16);
    for p in &mut planned {
        p.out.dtype = dtype;
    }
    planned.sort_by_key(|p| state_dict_order(&p.out.name));

    prepare_out(&[base, adapter], out, opts.force)?;
    let tensors: Vec<OutTensor> = planned.iter().map(|p| p.out.clone()).collect();
    let shards = plan_shards(&tensors, opts.max_shard_bytes);
    let mut merged = 0usize;
    let mut max_delta_ratio = 0f64;
    let mut max_quant_error: Option<f64> = None;
    let written = write_shards(out, &tensors, &shards, |i, buf| {
        let p = &planned[i];
        let name = &p.out.name;
        // A float tensor with nothing to change is converted straight from its stored bytes.
        let quantize_here = p.linear.is_some() && on_load.is_some();
        let delta = p.linear.and_then(|key| lora.ab.get(&key));
        if p.source == Source::Float && delta.is_none() && !quantize_here {
            let (stored, shape) = st.info(name)?;
            let from = float_dtype(stored).unwrap_or(DType::F32);
            return st.with_stored(name, &shape, |bytes, _| {
                buf.resize(p.out.bytes() as usize, 0);
                temper_core::dtype::convert_le(bytes, from, buf, dtype);
                Ok(())
            });
        }
        let mut w = base_f32(&st, base, p, name)?;
        if quantize_here {
            let before = w.clone();
            w = quantize_dequantize(opts.load, name, &w, &p.out.shape)?;
            let scale = before.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = before
                .iter()
                .zip(&w)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            let e = err as f64 / (scale as f64).max(f64::MIN_POSITIVE);
            max_quant_error = Some(max_quant_error.unwrap_or(0.0).max(e));
        }
        if let Some((a, b)) = delta {
            let (max_d, max_w) = add_delta(&mut w, a, b, lora.config.r, lora.scale);
            max_delta_ratio = max_delta_ratio.max(max_d as f64 / (max_w as f64).max(1e-30));
            merged += 1;
        }
        *buf = temper_core::dtype::encode_le(&w, dtype);
        Ok(())
    })?;

    // config.json: the output dtype, no quantization_config.
    if let Some(obj) = config.as_object_mut() {
        obj.remove("quantization_config");
        obj.insert("dtype".into(), dtype.hf_name().into());
        if obj.contains_key("torch_dtype") {
            obj.insert("torch_dtype".into(), dtype.hf_name().into());
        }
    }
    let text = temper_pyjson::dumps_sorted_indent2(&config) + "\n";
    crate::adapter::write_atomic(&out.join("config.json"), text.as_bytes())?;

    // Tokenizer files, generation_config.json, chat templates: everything else of the base.
    for entry in std::fs::read_dir(base).map_err(io_err(base))? {
        let entry = entry.map_err(io_err(base))?;
        let path = entry.path();
        let fname = entry.file_name().to_string_lossy().to_string();
        if !path.is_file() || fname == "config.json" || is_weight_file(&fname) {
            continue;
        }
        let dest = out.join(&fname);
        std::fs::copy(&path, &dest).map_err(io_err(&dest))?;
    }
    let gen = out.join("generation_config.json");
    if !gen.exists() {
        let mut g = serde_json::Map::new();
        g.insert("_from_model_config".into(), true.into());
        for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
                g.insert(key.into(), v.clone());
            }
        }
        let text = temper_pyjson::dumps_sorted_indent2(&serde_json::Value::Object(g));
        crate::adapter::write_atomic(&gen, (text + "\n").as_bytes())?;
    }
    debug_assert!(shards.len() > 1 || shards[0].file == SINGLE_FILE);

    Ok(MergeSummary {
        dtype,
        lora: lora.config.clone(),
        merged,
        tensors: tensors.len(),
        shards: shards.len(),
        bytes: written.bytes,
        parameters: written.parameters,
        quantized_base: stored_quant.or(on_load),
        max_delta_ratio,
        max_quant_error,
    })
}

/// A base tensor in f32: a float tensor converted exactly, a 4-bit or 8-bit one dequantised
/// (`code * absmax`, `code * SCB / 127`, in f32) as bitsandbytes does.
fn base_f32(st: &SafetensorsDir, dir: &Path, p: &Planned, name: &str) -> Result<Vec<f32>> {
    match p.source {
        Source::Float => Ok(st.read_shaped(name, &p.out.shape)?.data),
        Source::FourBit => {
            let q = QuantState::from_tensors(dir, name, |k| st.tensor_ref(k))?;
            for k in [
                "",
                ".absmax",
                ".quant_map",
                ".nested_absmax",
                ".nested_quant_map",
            ] {
                st.release(&format!("{name}{k}"));
            }
            if q.shape != p.out.shape {
                return Err(ModelError::Shape {
                    name: name.to_string(),
                    got: q.shape.clone(),
                    expected: p.out.shape.clone(),
                });
            }
            Ok(q.dequantize_to_f32()?)
        }
        Source::Int8 => {
            let (d_out, d_in) = (p.out.shape[0], p.out.shape[1]);
            let prefix = name.strip_suffix(".weight").unwrap_or(name);
            let q = read_int8(st, prefix, d_out, d_in)?;
            Ok(temper_quant::int8_vectorwise_dequant(
                &q.codes, &q.scales, d_in,
            )?)
        }
    }
}

/// `w` quantised as loading with `opts` quantises it (bit for bit what training used), then
/// dequantised to f32.
fn quantize_dequantize(
    opts: LoadOptions,
    name: &str,
    w: &[f32],
    shape: &[usize],
) -> Result<Vec<f32>> {
    if let Some(q) = opts.quantize {
        let qs = QuantState::quantize(
            w,
            shape,
            "bfloat16",
            q.blocksize,
            q.quant_type,
            q.double_quant,
        )
        .map_err(|e| ModelError::Quantize {
            name: name.to_string(),
            msg: e.to_string(),
        })?;
        return Ok(qs.dequantize_to_f32()?);
    }
    let (d_out, d_in) = (shape[0], shape[1]);
    let q = to_int8(name, w, d_out, d_in)?;
    Ok(temper_quant::int8_vectorwise_dequant(
        &q.codes, &q.scales, d_in,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_sort_in_state_dict_order() {
        let mut names = vec![
            "lm_head.weight",
            "model.layers.10.input_layernorm.weight",
            "model.layers.2.mlp.down_proj.weight",
            "model.layers.2.self_attn.q_proj.bias",
            "model.layers.2.self_attn.q_proj.weight",
            "model.norm.weight",
            "model.embed_tokens.weight",
            "model.layers.2.self_attn.k_proj.weight",
        ];
        names.sort_by_key(|n| state_dict_order(n));
        assert_eq!(
            names,
            [
                "model.embed_tokens.weight",
                "model.layers.2.self_attn.q_proj.weight",
                "model.layers.2.self_attn.q_proj.bias",
                "model.layers.2.self_attn.k_proj.weight",
                "model.layers.2.mlp.down_proj.weight",
                "model.layers.10.input_layernorm.weight",
                "model.norm.weight",
                "lm_head.weight",
            ]
        );
    }

    #[test]
    fn the_delta_is_b_times_a_times_the_scale() {
        // B (3, 2), A (2, 4)
        let b = [1.0, 2.0, 0.5, -1.0, 0.0, 3.0];
        let a = [1.0, 0.0, -1.0, 2.0, 0.5, 1.0, 0.25, -2.0];
        let mut w = vec![1.0f32; 12];
        let (max_d, max_w) = add_delta(&mut w, &a, &b, 2, 0.5);
        let mut want = vec![0f32; 12];
        for i in 0..3 {
            for j in 0..4 {
                let d: f32 = (0..2).map(|k| b[i * 2 + k] * a[k * 4 + j]).sum();
                want[i * 4 + j] = 1.0 + 0.5 * d;
            }
        }
        assert_eq!(w, want);
        assert_eq!(max_w, 1.0);
        assert_eq!(max_d, 3.0);
    }
}
