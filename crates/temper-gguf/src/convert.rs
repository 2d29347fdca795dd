//! GGUF -> Hugging Face folder: config.json, model.safetensors (tensors renamed to
//! transformers' names, dequantised, llama's Q/K row permutation undone), tokenizer.json and
//! tokenizer_config.json.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::json;

use crate::config::{hf_config, Dims, GgufArch};
use crate::error::{io_err, GgufError, Result};
use crate::reader::{GgufFile, TensorInfo};
use crate::tokenizer::tokenizer_files;

/// The dtype the safetensors file is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    F16,
    BF16,
}

impl OutDtype {
    /// Parses `bfloat16 | float16 | float32` (and the short forms bf16, f16, fp16, f32, fp32).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "float32" | "f32" | "fp32" => Some(OutDtype::F32),
            "float16" | "f16" | "fp16" => Some(OutDtype::F16),
            "bfloat16" | "bf16" => Some(OutDtype::BF16),
            _ => None,
        }
    }

    /// The name transformers writes in config.json's `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "float32",
            OutDtype::F16 => "float16",
            OutDtype::BF16 => "bfloat16",
        }
    }

    fn safetensors_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "F32",
            OutDtype::F16 => "F16",
            OutDtype::BF16 => "BF16",
        }
    }

    fn size(self) -> usize {
        match self {
            OutDtype::F32 => 4,
            OutDtype::F16 | OutDtype::BF16 => 2,
        }
    }
}

/// The version of what `import` writes, raised whenever the folder it writes for the same
/// file changes, so that a cache of imports keyed on the file can tell one made by an older
/// temper. 2: the tokenizer splits text as llama.cpp does for the file's `tokenizer.ggml.pre`.
/// 3: llama3 RoPE scaling from `rope_freqs`; qwen3 files. 4: SentencePiece tokenizers; tokens
/// llama.cpp treats as control by their text (`</s>`, `<|end|>`...) are special whatever their
/// type, and Phi-3's strip the whitespace after them; phi3, gemma, gemma2 and gemma3 files.
pub const IMPORT_VERSION: u32 = 4;

/// What an import wrote.
#[derive(Debug)]
pub struct ImportSummary {
    pub arch: GgufArch,
    pub tensors: usize,
    pub parameters: u64,
    pub out: PathBuf,
}

/// transformers' name for a GGUF tensor, or None for tensors with no counterpart (rope_freqs).
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, param) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

/// transformers' name for a GGUF tensor of `arch`: as [`hf_name`], with the tensors llama.cpp
/// names differently per family (its `gguf-py/gguf/tensor_mapping.py`): Phi-3's fused
/// `attn_qkv` (qkv_proj) and `ffn_up` (gate_up_proj); Gemma 2 / 3's `post_attention_norm`
/// (post_attention_layernorm), `ffn_norm` (pre_feedforward_layernorm) and `post_ffw_norm`
/// (post_feedforward_layernorm).
pub fn hf_name_for(arch: GgufArch, gguf: &str) -> Option<String> {
    let layer_tensor = |hf: &str| -> Option<String> {
        let rest = gguf.strip_prefix("blk.")?;
        let (layer, rest) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (_, param) = rest.rsplit_once('.')?;
        Some(format!("model.layers.{layer}.{hf}.{param}"))
    };
    let module = gguf
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(_, r)| r.rsplit_once('.'))
        .map(|(m, _)| m);
    match (arch, module) {
        (GgufArch::Phi3, Some("attn_qkv")) => layer_tensor("self_attn.qkv_proj"),
        (GgufArch::Phi3, Some("ffn_up")) => layer_tensor("mlp.gate_up_proj"),
        (GgufArch::Gemma2 | GgufArch::Gemma3, Some("post_attention_norm")) => {
            layer_tensor("post_attention_layernorm")
        }
        (GgufArch::Gemma2 | GgufArch::Gemma3, Some("ffn_norm")) => {
            layer_tensor("pre_feedforward_layernorm")
        }
        (GgufArch::Gemma2 | GgufArch::Gemma3, Some("post_ffw_norm")) => {
            layer_tensor("post_feedforward_layernorm")
        }
        _ => hf_name(gguf),
    }
}

/// GGUF tensors with no tensor counterpart: llama3's `rope_freqs` and Phi-3's LongRoPE
/// factors, read into config.json's `rope_scaling` instead.
fn is_config_tensor(name: &str) -> bool {
    matches!(
        name,
        "rope_freqs.weight" | "rope_factors_long.weight" | "rope_factors_short.weight"
    )
}

/// Undoes llama.cpp's rotary permutation of q_proj / k_proj rows (`convert_hf_to_gguf.py`
/// `LlamaModel.permute`, reversed as transformers' `LlamaTensorProcessor` does): within each
/// head, GGUF row `2d + t` is HF row `t * half + d` (half = head_dim / 2, t in {0, 1}).
/// `w`: (rows, cols) row-major, rows = n_head * head_dim (a bias is cols = 1).
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for d in 0..half {
            for t in 0..2 {
                let src = h * head_dim + 2 * d + t;
                let dst = h * head_dim + t * half + d;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// One tensor to write: its HF name, shape and where it comes from.
struct Planned<'a> {
    name: String,
    shape: Vec<usize>,
    info: &'a TensorInfo,
    /// Heads to un-permute over (llama q/k), if any.
    unpermute: Option<usize>,
    /// Subtracted from every value (Gemma's norms, stored as 1 + w).
    shift: f32,
}

fn plan<'a>(file: &'a GgufFile, arch: GgufArch, dims: &Dims) -> Result<Vec<Planned<'a>>> {
    let mut out = Vec::new();
    for t in &file.tensors {
        let Some(name) = hf_name_for(arch, &t.name) else {
            if !is_config_tensor(&t.name) {
                return Err(GgufError::Unsupported {
                    path: file.path().to_path_buf(),
                    msg: format!(
                        "tensor `{}` has no counterpart in a {} model",
                        t.name,
                        arch.key()
                    ),
                });
            }
            continue;
        };
        let unpermute = match arch {
            GgufArch::Llama if t.name.contains(".attn_q.") => Some(dims.heads),
            GgufArch::Llama if t.name.contains(".attn_k.") => Some(dims.kv_heads),
            _ => None,
        };
        let shape = t.shape();
        if let Some(n) = unpermute {
            let rows = shape.first().copied().unwrap_or(0);
            if n == 0 || rows % (2 * n) != 0 {
                return Err(GgufError::Tensor {
                    path: file.path().to_path_buf(),
                    tensor: t.name.clone(),
                    msg: format!("{rows} rows do not split into {n} heads of even size"),
                });
            }
        }
        if t.ty.block().is_none() {
            return Err(GgufError::Tensor {
                path: file.path().to_path_buf(),
                tensor: t.name.clone(),
                msg: format!("type {} is not one temper dequantises", t.ty),
            });
        }
        let shift = if name.ends_with("norm.weight") {
            arch.norm_shift()
        } else {
            0.0
        };
        out.push(Planned {
            name,
            shape,
            info: t,
            unpermute,
            shift,
        });
    }
    Ok(out)
}

/// Writes `model.safetensors` by streaming one tensor at a time (the header first: offsets
/// are known from the shapes).
fn write_safetensors(
    file: &GgufFile,
    planned: &[Planned<'_>],
    dtype: OutDtype,
    path: &Path,
) -> Result<u64> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        json!({"format": "pt", "source": "temper import-gguf"}),
    );
    let mut offset = 0usize;
    for p in planned {
        let bytes = p.shape.iter().product::<usize>() * dtype.size();
        header.insert(
            p.name.clone(),
            json!({"dtype": dtype.safetensors_name(), "shape": p.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut head =
        serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| GgufError::Format {
            path: path.to_path_buf(),
            msg: format!("cannot serialise the safetensors header: {e}"),
        })?;
    // The data starts 8-aligned, as the safetensors library pads it.
    while (head.len() + 8) % 8 != 0 {
        head.push(b' ');
    }
    let f = File::create(path).map_err(io_err(path))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    w.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io_err(path))?;
    w.write_all(&head).map_err(io_err(path))?;
    let mut params = 0u64;
    for p in planned {
        let mut v = file.tensor_f32(p.info)?;
        if let Some(n) = p.unpermute {
            let rows = p.shape[0];
            v = unpermute_rows(&v, rows, v.len() / rows, n);
        }
        if p.shift != 0.0 {
            v.iter_mut().for_each(|x| *x -= p.shift);
        }
        params += v.len() as u64;
        let mut buf = Vec::with_capacity(v.len() * dtype.size());
        match dtype {
            OutDtype::F32 => v
                .iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
            OutDtype::F16 => v
                .iter()
                .for_each(|&x| buf.extend_from_slice(&f16::from_f32(x).to_le_bytes())),
            OutDtype::BF16 => v
                .iter()
                .for_each(|&x| buf.extend_from_slice(&bf16::from_f32(x).to_le_bytes())),
        }
        w.write_all(&buf).map_err(io_err(path))?;
    }
    w.flush().map_err(io_err(path))?;
    Ok(params)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| GgufError::Format {
        path: path.to_path_buf(),
        msg: format!("cannot serialise JSON: {e}"),
    })?;
    std::fs::write(path, text + "\n").map_err(io_err(path))
}

/// Converts `file` into a Hugging Face folder `out` (created if needed; files in it replaced).
pub fn import(file: &GgufFile, out: &Path, dtype: OutDtype) -> Result<ImportSummary> {
    let arch = GgufArch::of(file)?;
    let (config, dims) = hf_config(file, arch, dtype.torch_name())?;
    let planned = plan(file, arch, &dims)?;
    let (tokenizer, tokenizer_config) = tokenizer_files(file)?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    // Written under a temporary name and renamed last, so a folder with model.safetensors is
    // complete.
    let tmp = out.join("model.safetensors.partial");
    let params = write_safetensors(file, &planned, dtype, &tmp)?;
    write_json(&out.join("config.json"), &config)?;
    write_json(&out.join("tokenizer.json"), &tokenizer)?;
    write_json(&out.join("tokenizer_config.json"), &tokenizer_config)?;
    let mut gen = serde_json::Map::new();
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(v) = config.get(key) {
            gen.insert(key.into(), v.clone());
        }
    }
    write_json(
        &out.join("generation_config.json"),
        &serde_json::Value::Object(gen),
    )?;
    let st = out.join("model.safetensors");
    std::fs::rename(&tmp, &st).map_err(io_err(&st))?;
    Ok(ImportSummary {
        arch,
        tensors: planned.len(),
        parameters: params,
        out: out.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").as_deref(),
            Some("model.layers.0.self_attn.k_proj.bias")
        );
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight").as_deref(),
            Some("model.layers.3.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }

    /// The permutation llama.cpp applies (convert_hf_to_gguf.py):
    /// `w.reshape(n_head, 2, dim // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)`.
    fn permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let half = rows / n_head / 2;
        let mut out = vec![0f32; w.len()];
        for h in 0..n_head {
            for t in 0..2 {
                for d in 0..half {
                    // source index (h, t, d) goes to (h, d, t)
                    let src = (h * 2 + t) * half + d;
                    let dst = (h * half + d) * 2 + t;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (rows, cols, heads) = (3 * 8, 5, 3);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let p = permute(&w, rows, cols, heads);
        assert_ne!(p, w);
        assert_eq!(unpermute_rows(&p, rows, cols, heads), w);
    }
}
