//! Hugging Face folder -> GGUF, as llama.cpp's `convert_hf_to_gguf.py` lays a llama or qwen2
//! model out: tensors renamed to llama.cpp's names (llama's q/k rows permuted for its rotary
//! layout), 1-D tensors in f32 and matrices in the asked type (f32, f16, bf16, or quantised
//! as llama.cpp's `quantize` does: q8_0, q4_0, q4_k_m, q5_k_m, q6_k, see [`crate::mix`]), the
//! `<arch>.*` hyperparameters, and a byte-level BPE tokenizer (tokens, token types, merges,
//! `tokenizer.ggml.pre`, special-token ids, the chat template).
//!
//! [`export_lora`] writes a PEFT adapter as llama.cpp's LoRA GGUF (`convert_lora_to_gguf.py`):
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for each adapted
//! weight `<name>.lora_a` (dims [in, r]) and `<name>.lora_b` (dims [r, out]).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::SafeTensors;
use serde_json::Value as Json;

use crate::dequant::GgmlType;
use crate::error::{io_err, GgufError, Result};
pub use crate::mix::ExportType;
use crate::mix::{tensor_type, MixModel};
use crate::pretokenizer::{PreTokenizer, KNOWN_NAMES};
use crate::quantize::quantize_par;
use crate::reader::Value;
use crate::writer::{write_gguf, OutTensor};

/// What an export wrote.
#[derive(Debug)]
pub struct ExportSummary {
    pub arch: &'static str,
    pub tensors: usize,
    pub bytes: u64,
    pub out: PathBuf,
}

fn unsupported(path: &Path, msg: impl Into<String>) -> GgufError {
    GgufError::Unsupported {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| GgufError::Format {
        path: path.to_path_buf(),
        msg: format!("not valid JSON: {e}"),
    })
}

/// The safetensors files of a Hugging Face folder, mapped.
struct Folder {
    files: Vec<(PathBuf, Mmap)>,
    index: HashMap<String, usize>,
}

impl Folder {
    fn open(dir: &Path, names: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for path in names {
            let f = File::open(path).map_err(io_err(path))?;
            // SAFETY: mapped read-only; temper never writes a file it has mapped.
            let mmap = unsafe { Mmap::map(&f) }.map_err(io_err(path))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| GgufError::Format {
                path: path.clone(),
                msg: format!("not a safetensors file: {e}"),
            })?;
            for n in st.names() {
                index.insert(n.to_string(), files.len());
            }
            files.push((path.clone(), mmap));
        }
        if files.is_empty() {
            return Err(unsupported(dir, "holds no safetensors files"));
        }
        Ok(Folder { files, index })
    }

    /// `dir`'s model.safetensors or the shards of its index.
    fn model(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let names = if index.is_file() {
            let v = read_json(&index)?;
            let mut n: Vec<PathBuf> = v["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|f| f.as_str().map(|f| dir.join(f)))
                        .collect()
                })
                .unwrap_or_default();
            n.sort();
            n.dedup();
            n
        } else {
            vec![dir.join("model.safetensors")]
        };
        Self::open(dir, &names)
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// (shape, f32 values) of a F32 / BF16 / F16 tensor.
    fn read(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let &i = self.index.get(name).ok_or_else(|| GgufError::Tensor {
            path: self.files[0].0.clone(),
            tensor: name.to_string(),
            msg: "is missing".into(),
        })?;
        let (path, mmap) = &self.files[i];
        let bad = |msg: String| GgufError::Tensor {
            path: path.clone(),
            tensor: name.to_string(),
            msg,
        };
        let st = SafeTensors::deserialize(mmap).map_err(|e| bad(e.to_string()))?;
        let v = st.tensor(name).map_err(|e| bad(e.to_string()))?;
        let d = v.data();
        let values = match v.dtype() {
            safetensors::Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::BF16 => d
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            safetensors::Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(bad(format!(
                    "is {other:?}; export reads F32, BF16 and F16 tensors (a 4-bit or 8-bit \
                     folder: merge it to 16 bits first)"
                )))
            }
        };
        Ok((v.shape().to_vec(), values))
    }
}

/// The hyperparameters the export needs from config.json.
struct Hparams {
    arch: &'static str,
    hidden: u64,
    intermediate: u64,
    layers: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    eps: f64,
    theta: f64,
    context: u64,
    vocab: u64,
    rope: Json,
    bos: Option<u64>,
    eos: Option<u64>,
    pad: Option<u64>,
}

fn hparams(dir: &Path) -> Result<Hparams> {
    let path = dir.join("config.json");
    let c = read_json(&path)?;
    let missing = |k: &str| GgufError::Metadata {
        path: path.clone(),
        key: k.into(),
        msg: "is missing (config.json)".into(),
    };
    let u = |k: &str| c[k].as_u64().ok_or_else(|| missing(k));
    let model_type = c["model_type"].as_str().unwrap_or_default();
    let arch = match model_type {
        // llama.cpp runs Mistral checkpoints as llama.
        "llama" | "mistral" => "llama",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        other => {
            return Err(unsupported(
                &path,
                format!(
                    "model_type `{other}`: temper exports llama, mistral, qwen2 and qwen3 models"
                ),
            ))
        }
    };
    let hidden = u("hidden_size")?;
    let heads = u("num_attention_heads")?;
    // transformers 5 keeps rope_theta and the scaling in rope_parameters.
    let rope = if c["rope_parameters"].is_object() {
        c["rope_parameters"].clone()
    } else {
        c["rope_scaling"].clone()
    };
    let theta = c["rope_theta"]
        .as_f64()
        .or_else(|| c["rope_parameters"]["rope_theta"].as_f64())
        .unwrap_or(10000.0);
    Ok(Hparams {
        arch,
        hidden,
        intermediate: u("intermediate_size")?,
        layers: u("num_hidden_layers")?,
        heads,
        kv_heads: c["num_key_value_heads"].as_u64().unwrap_or(heads),
        head_dim: c["head_dim"].as_u64().unwrap_or(if model_type == "qwen3" {
            128 // Qwen3Config's default
        } else {
            hidden / heads.max(1)
        }),
        eps: c["rms_norm_eps"]
            .as_f64()
            .ok_or_else(|| missing("rms_norm_eps"))?,
        theta,
        context: c["max_position_embeddings"].as_u64().unwrap_or(2048),
        vocab: u("vocab_size")?,
        rope,
        bos: c["bos_token_id"].as_u64(),
        eos: c["eos_token_id"]
            .as_u64()
            .or_else(|| c["eos_token_id"][0].as_u64()),
        pad: c["pad_token_id"].as_u64(),
    })
}

/// llama.cpp's name for a tensor of a decoder layer's module (the inverse of
/// [`crate::hf_name`]).
fn gguf_module(hf: &str) -> Option<&'static str> {
    Some(match hf {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    })
}

/// llama.cpp's rotary permutation of q/k rows (`LlamaModel.permute` in convert_hf_to_gguf.py):
/// within each head, HF row `t * half + d` becomes GGUF row `2d + t`. `w`: (rows, cols).
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for d in 0..half {
            for t in 0..2 {
                let src = h * head_dim + t * half + d;
                let dst = h * head_dim + 2 * d + t;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Values encoded as ggml type `ty`, appended to `buf`.
fn encode(values: &[f32], ty: GgmlType, buf: &mut Vec<u8>, path: &Path, name: &str) -> Result<()> {
    quantize_par(ty, values, buf).map_err(|msg| GgufError::Tensor {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        msg,
    })
}

/// One tensor of the output: its GGUF name, the HF tensor it comes from, and the heads to
/// permute its rows over (llama q/k).
struct Planned {
    out: OutTensor,
    hf: String,
    permute: Option<usize>,
}

/// llama3 RoPE scaling as llama.cpp takes it: a `rope_freqs` tensor of one factor per
/// frequency (convert_hf_to_gguf.py `LlamaModel.generate_extra_tensors`).
fn llama3_rope_freqs(h: &Hparams) -> Option<Vec<f32>> {
    let r = &h.rope;
    if r["rope_type"].as_str().or(r["type"].as_str()) != Some("llama3") {
        return None;
    }
    let factor = r["factor"].as_f64().unwrap_or(8.0);
    let low = r["low_freq_factor"].as_f64().unwrap_or(1.0);
    let high = r["high_freq_factor"].as_f64().unwrap_or(4.0);
    let old = r["original_max_position_embeddings"]
        .as_f64()
        .unwrap_or(8192.0);
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    let dim = h.head_dim as usize;
    Some(
        (0..dim / 2)
            .map(|i| {
                let freq = 1.0 / h.theta.powf((2 * i) as f64 / dim as f64);
                let wavelen = 2.0 * std::f64::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    factor as f32
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                }
            })
            .collect(),
    )
}

/// The `<arch>.*` keys.
fn arch_metadata(h: &Hparams, meta: &mut Vec<(String, Value)>) {
    let a = h.arch;
    let mut put = |k: &str, v: Value| meta.push((format!("{a}.{k}"), v));
    put("context_length", Value::U32(h.context as u32));
    put("embedding_length", Value::U32(h.hidden as u32));
    put("block_count", Value::U32(h.layers as u32));
    put("feed_forward_length", Value::U32(h.intermediate as u32));
    put("attention.head_count", Value::U32(h.heads as u32));
    put("attention.head_count_kv", Value::U32(h.kv_heads as u32));
    put("rope.freq_base", Value::F32(h.theta as f32));
    put("attention.layer_norm_rms_epsilon", Value::F32(h.eps as f32));
    put("rope.dimension_count", Value::U32(h.head_dim as u32));
    if h.head_dim * h.heads != h.hidden {
        // As convert_hf_to_gguf.py writes an explicit head_dim (Qwen3, Mistral-Nemo).
        put("attention.key_length", Value::U32(h.head_dim as u32));
        put("attention.value_length", Value::U32(h.head_dim as u32));
    }
    put("vocab_size", Value::U32(h.vocab as u32));
    let ty = h.rope["rope_type"].as_str().or(h.rope["type"].as_str());
    if let (Some(t @ ("linear" | "yarn")), Some(f)) = (ty, h.rope["factor"].as_f64()) {
        put("rope.scaling.type", Value::String(t.into()));
        put("rope.scaling.factor", Value::F32(f as f32));
        if let Some(o) = h.rope["original_max_position_embeddings"].as_u64() {
            put("rope.scaling.original_context_length", Value::U32(o as u32));
        }
    }
}

/// Exports the model in `dir` (a Hugging Face folder of F32 / BF16 / F16 safetensors) to the
/// GGUF file `out`, its matrices in `ty`; `general.name` is `name`, else the folder's name.
pub fn export(dir: &Path, out: &Path, ty: ExportType, name: Option<&str>) -> Result<ExportSummary> {
    let h = hparams(dir)?;
    let st = Folder::model(dir)?;
    let tied = !st.contains("lm_head.weight");
    let mix = MixModel {
        layers: h.layers,
        tied,
    };
    let mut plan: Vec<Planned> = Vec::new();
    let mut add = |st: &Folder, hf: String, gguf: String, permute: Option<usize>| -> Result<()> {
        let (shape, _) = shape_of(st, &hf)?;
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let ty = tensor_type(ty, mix, &gguf, &dims);
        plan.push(Planned {
            out: OutTensor {
                name: gguf,
                dims,
                ty,
            },
            hf,
            permute,
        });
        Ok(())
    };
    add(
        &st,
        "model.embed_tokens.weight".into(),
        "token_embd.weight".into(),
        None,
    )?;
    for l in 0..h.layers {
        for hf in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "self_attn.q_norm",
            "self_attn.k_norm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "post_attention_layernorm",
        ] {
            let g = gguf_module(hf).unwrap_or_default();
            for param in ["weight", "bias"] {
                let name = format!("model.layers.{l}.{hf}.{param}");
                let optional = param == "bias" || hf.ends_with("_norm");
                if optional && !st.contains(&name) {
                    continue;
                }
                let permute = match (h.arch, hf) {
                    ("llama", "self_attn.q_proj") => Some(h.heads as usize),
                    ("llama", "self_attn.k_proj") => Some(h.kv_heads as usize),
                    _ => None,
                };
                add(&st, name, format!("blk.{l}.{g}.{param}"), permute)?;
            }
        }
    }
    add(
        &st,
        "model.norm.weight".into(),
        "output_norm.weight".into(),
        None,
    )?;
    if !tied {
        add(&st, "lm_head.weight".into(), "output.weight".into(), None)?;
    }
    let rope_freqs = llama3_rope_freqs(&h);
    if let Some(f) = &rope_freqs {
        plan.push(Planned {
            out: OutTensor {
                name: "rope_freqs.weight".into(),
                dims: vec![f.len() as u64],
                ty: GgmlType::F32,
            },
            hf: String::new(),
            permute: None,
        });
    }

    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(h.arch.into())),
        ("general.type".into(), Value::String("model".into())),
        (
            "general.name".into(),
            Value::String(name.map_or_else(|| folder_name(dir), str::to_string)),
        ),
        ("general.file_type".into(), Value::U32(ty.file_type())),
    ];
    if ty.is_quantized() {
        meta.push(("general.quantization_version".into(), Value::U32(2)));
    }
    arch_metadata(&h, &mut meta);
    tokenizer_metadata(dir, &h, &mut meta)?;

    let tensors: Vec<OutTensor> = plan.iter().map(|p| p.out.clone()).collect();
    let bytes = write_gguf(out, &meta, &tensors, |i, buf| {
        let p = &plan[i];
        let values = if p.hf.is_empty() {
            rope_freqs.clone().unwrap_or_default()
        } else {
            let (shape, mut v) = st.read(&p.hf)?;
            if let Some(n) = p.permute {
                let rows = shape[0];
                let cols = v.len() / rows.max(1);
                if n == 0 || rows % (2 * n) != 0 {
                    return Err(GgufError::Tensor {
                        path: dir.to_path_buf(),
                        tensor: p.hf.clone(),
                        msg: format!("{rows} rows do not split into {n} heads of even size"),
                    });
                }
                v = permute_rows(&v, rows, cols, n);
            }
            v
        };
        encode(&values, p.out.ty, buf, out, &p.out.name)
    })?;
    Ok(ExportSummary {
        arch: h.arch,
        tensors: tensors.len(),
        bytes,
        out: out.to_path_buf(),
    })
}

fn shape_of(st: &Folder, name: &str) -> Result<(Vec<usize>, ())> {
    let &i = st.index.get(name).ok_or_else(|| GgufError::Tensor {
        path: st.files[0].0.clone(),
        tensor: name.to_string(),
        msg: "is missing from the model's safetensors files".into(),
    })?;
    let (path, mmap) = &st.files[i];
    let s = SafeTensors::deserialize(mmap).map_err(|e| GgufError::Format {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    let v = s.tensor(name).map_err(|e| GgufError::Format {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    Ok((v.shape().to_vec(), ()))
}

fn folder_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into())
}

/// llama.cpp token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The `tokenizer.*` keys from tokenizer.json and tokenizer_config.json (byte-level BPE).
fn tokenizer_metadata(dir: &Path, h: &Hparams, meta: &mut Vec<(String, Value)>) -> Result<()> {
    let path = dir.join("tokenizer.json");
    let tok = read_json(&path)?;
    let model = &tok["model"];
    if model["type"].as_str() != Some("BPE") || tok["decoder"]["type"].as_str() != Some("ByteLevel")
    {
        return Err(unsupported(
            &path,
            "is not a byte-level BPE tokenizer; temper exports gpt2-style (byte-level BPE) \
             tokenizers only so far",
        ));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| unsupported(&path, "has no model.vocab object"))?;
    let mut by_id: HashMap<u64, (String, i32)> = HashMap::new();
    for (t, id) in vocab {
        if let Some(id) = id.as_u64() {
            by_id.insert(id, (t.clone(), NORMAL));
        }
    }
    for a in tok["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
            continue;
        };
        let ty = if a["special"].as_bool() == Some(true) {
            CONTROL
        } else {
            USER_DEFINED
        };
        by_id.insert(id, (content.to_string(), ty));
    }
    let n = by_id.keys().max().map_or(0, |m| m + 1).max(h.vocab);
    let mut tokens = Vec::with_capacity(n as usize);
    let mut types = Vec::with_capacity(n as usize);
    for id in 0..n {
        let (t, ty) = by_id
            .remove(&id)
            .unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED));
        tokens.push(Value::String(t));
        types.push(Value::I32(ty));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(Value::String(s.clone())),
            Json::Array(p) => Some(Value::String(format!(
                "{} {}",
                p.first()?.as_str()?,
                p.get(1)?.as_str()?
            ))),
            _ => None,
        })
        .collect();
    let token_id = |name: &str| -> Option<u64> {
        tokens
            .iter()
            .position(|t| t.as_str() == Some(name))
            .map(|i| i as u64)
    };

    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() {
        read_json(&cfg_path)?
    } else {
        Json::Null
    };
    let special = |key: &str| -> Option<u64> {
        let v = &cfg[key];
        let name = v.as_str().or(v["content"].as_str())?;
        token_id(name)
    };
    meta.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
    meta.push((
        "tokenizer.ggml.pre".into(),
        Value::String(
            pre_name(
                &tok["pre_tokenizer"],
                model["ignore_merges"].as_bool().unwrap_or(false),
            )
            .into(),
        ),
    ));
    meta.push(("tokenizer.ggml.tokens".into(), Value::Array(tokens.clone())));
    meta.push(("tokenizer.ggml.token_type".into(), Value::Array(types)));
    meta.push(("tokenizer.ggml.merges".into(), Value::Array(merges)));
    for (key, id) in [
        ("bos_token_id", special("bos_token").or(h.bos)),
        ("eos_token_id", special("eos_token").or(h.eos)),
        ("unknown_token_id", special("unk_token")),
        ("padding_token_id", special("pad_token").or(h.pad)),
    ] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{key}"), Value::U32(id as u32)));
        }
    }
    if let Some(b) = cfg["add_bos_token"].as_bool() {
        meta.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(b)));
    }
    if let Some(b) = cfg["add_eos_token"].as_bool() {
        meta.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(b)));
    }
    let template = match &cfg["chat_template"] {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => named
            .iter()
            .find(|t| t["name"].as_str() == Some("default"))
            .and_then(|t| t["template"].as_str().map(str::to_string)),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    };
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(())
}

/// The split regexes Llama 3's and Qwen2's tokenizer.json files hold.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer: the llama.cpp name of the known
/// splits (llama-bpe, qwen2, smollm, gpt-2, as Hugging Face writes them, or any llama.cpp
/// split as temper's GGUF import writes it), else "default". llama.cpp itself names the
/// pre-tokenizer by hashing how a test text tokenises; this reads the regexes instead.
fn pre_name(pre: &Json, ignore_merges: bool) -> &'static str {
    let parts: Vec<&Json> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect(),
        _ => vec![pre],
    };
    let regexes: Vec<&str> = parts
        .iter()
        .filter(|p| p["type"].as_str() == Some("Split"))
        .filter_map(|p| p["pattern"]["Regex"].as_str())
        .collect();
    let byte_level_regex = parts.iter().any(|p| {
        p["type"].as_str() == Some("ByteLevel") && p["use_regex"].as_bool() != Some(false)
    });
    match (regexes.as_slice(), byte_level_regex) {
        ([r], false) if *r == LLAMA3_SPLIT => return "llama-bpe",
        ([r], false) if *r == QWEN2_SPLIT => return "qwen2",
        ([r], true) if *r == r"\p{N}" => return "smollm",
        ([], true) => return "gpt-2",
        _ => {}
    }
    // temper's import writes llama.cpp's own regexes, in order, with a ByteLevel step that
    // does not split: name the first llama.cpp pre-tokenizer with the same splits (the usual
    // names first, as several names share one split).
    const USUAL: [&str; 5] = ["llama-bpe", "qwen2", "smollm", "gpt-2", "default"];
    if !byte_level_regex {
        for name in USUAL.iter().chain(KNOWN_NAMES) {
            if let Some(p) = PreTokenizer::from_name(name) {
                if p.pre_type.byte_level()
                    && p.ignore_merges == ignore_merges
                    && p.pre_type.regexes() == regexes.as_slice()
                {
                    return name;
                }
            }
        }
    }
    "default"
}

/// Writes the PEFT adapter in `adapter` (for the model in `model`, whose config.json names the
/// architecture and heads) as llama.cpp's LoRA GGUF in `ty` (q8_0 where rows are whole
/// blocks, else f16). rsLoRA's scale alpha / sqrt(r) is written as alpha * sqrt(r), since
/// llama.cpp scales by alpha / r.
pub fn export_lora(
    model: &Path,
    adapter: &Path,
    out: &Path,
    ty: ExportType,
) -> Result<ExportSummary> {
    if !matches!(
        ty,
        ExportType::F32 | ExportType::F16 | ExportType::BF16 | ExportType::Q8_0
    ) {
        return Err(unsupported(
            out,
            format!(
                "a LoRA adapter is written in f32, f16, bf16 or q8_0, not {}",
                ty.name()
            ),
        ));
    }
    let h = hparams(model)?;
    let cfg_path = adapter.join("adapter_config.json");
    let cfg = read_json(&cfg_path)?;
    let r = cfg["r"].as_u64().ok_or_else(|| GgufError::Metadata {
        path: cfg_path.clone(),
        key: "r".into(),
        msg: "is missing".into(),
    })?;
    let alpha = cfg["lora_alpha"].as_f64().unwrap_or(r as f64);
    let alpha = if cfg["use_rslora"].as_bool() == Some(true) {
        alpha * (r as f64).sqrt()
    } else {
        alpha
    };
    let st = Folder::open(adapter, &[adapter.join("adapter_model.safetensors")])?;
    // (layer, GGUF weight name, A = 0 / B = 1, adapter key), sorted: each weight's A then B.
    let mut names: Vec<(u64, String, usize, String)> = Vec::new();
    for key in st.index.keys() {
        let k = key.replace(".default.", ".");
        let Some(rest) = k.strip_prefix("base_model.model.model.layers.") else {
            return Err(unsupported(
                &cfg_path,
                format!("holds `{key}`, not a LoRA tensor of a decoder layer"),
            ));
        };
        let (l, rest) = rest.split_once('.').unwrap_or(("", ""));
        let (module, which) = match rest.rsplit_once(".lora_") {
            Some((m, w)) => (m, w),
            None => ("", ""),
        };
        let (Ok(l), Some(g), Some(which)) = (
            l.parse::<u64>(),
            gguf_module(module),
            match which {
                "A.weight" => Some(0usize),
                "B.weight" => Some(1usize),
                _ => None,
            },
        ) else {
            return Err(unsupported(
                &cfg_path,
                format!("holds `{key}`, which temper cannot place in a llama.cpp adapter"),
            ));
        };
        names.push((l, format!("blk.{l}.{g}.weight"), which, key.clone()));
    }
    names.sort();
    let lora_mix = MixModel {
        layers: h.layers,
        tied: false,
    };
    let mut plan: Vec<Planned> = Vec::new();
    for (_, base, which, key) in &names {
        let (shape, _) = shape_of(&st, key)?;
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let permute = match (h.arch, *which) {
            ("llama", 1) if base.contains(".attn_q.") => Some(h.heads as usize),
            ("llama", 1) if base.contains(".attn_k.") => Some(h.kv_heads as usize),
            _ => None,
        };
        let suffix = if *which == 0 { "lora_a" } else { "lora_b" };
        plan.push(Planned {
            out: OutTensor {
                name: format!("{base}.{suffix}"),
                ty: tensor_type(ty, lora_mix, &format!("{base}.{suffix}"), &dims),
                dims,
            },
            hf: key.clone(),
            permute,
        });
    }
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(h.arch.into())),
        ("general.type".into(), Value::String("adapter".into())),
        ("general.name".into(), Value::String(folder_name(adapter))),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("adapter.type".into(), Value::String("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32(alpha as f32)),
    ];
    let tensors: Vec<OutTensor> = plan.iter().map(|p| p.out.clone()).collect();
    let bytes = write_gguf(out, &meta, &tensors, |i, buf| {
        let p = &plan[i];
        let (shape, mut v) = st.read(&p.hf)?;
        if let Some(n) = p.permute {
            v = permute_rows(&v, shape[0], shape[1], n);
        }
        encode(&v, p.out.ty, buf, out, &p.out.name)
    })?;
    Ok(ExportSummary {
        arch: h.arch,
        tensors: tensors.len(),
        bytes,
        out: out.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_inverts_the_importers_unpermute() {
        let (rows, cols, heads) = (24, 3, 3);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let p = permute_rows(&w, rows, cols, heads);
        assert_ne!(p, w);
        assert_eq!(crate::unpermute_rows(&p, rows, cols, heads), w);
    }

    /// The pre-tokenizer as temper's import writes it: llama.cpp's regexes, then a ByteLevel
    /// step that does not split.
    fn imported(name: &str) -> (Json, bool) {
        let p = PreTokenizer::from_name(name).expect("known");
        let mut steps: Vec<Json> = p
            .pre_type
            .regexes()
            .iter()
            .map(|r| serde_json::json!({"type": "Split", "pattern": {"Regex": r}}))
            .collect();
        steps.push(serde_json::json!({"type": "ByteLevel", "use_regex": false}));
        (
            serde_json::json!({"type": "Sequence", "pretokenizers": steps}),
            p.ignore_merges,
        )
    }

    #[test]
    fn imported_pre_tokenizers_keep_their_names() {
        for name in ["smollm", "llama-bpe", "qwen2", "gpt-2", "default"] {
            let (pre, ignore_merges) = imported(name);
            assert_eq!(pre_name(&pre, ignore_merges), name);
        }
        // Another name with one of those splits comes back as the usual name for it.
        let (pre, ignore_merges) = imported("phi-2");
        assert_eq!(pre_name(&pre, ignore_merges), "gpt-2");
        // Hugging Face's own SmolLM2 tokenizer.json.
        let hf = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated"},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]});
        assert_eq!(pre_name(&hf, false), "smollm");
    }
}
