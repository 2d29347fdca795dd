//! One 4-bit weight as transformers + bitsandbytes save it (`QuantState.as_dict(packed=True)`
//! under the weight's name), and back (`QuantState.from_dict`).
//!
//! For a linear weight `X.weight` of shape (out, in):
//!
//! | key | dtype | shape |
//! |---|---|---|
//! | `X.weight` | U8 | (ceil(numel/2), 1): two codes per byte |
//! | `X.weight.absmax` | F32, or U8 when double-quantised | (blocks,) |
//! | `X.weight.quant_map` | F32 | (16,): the NF4 / FP4 table |
//! | `X.weight.nested_absmax` | F32 | (ceil(blocks/256),), double quantisation only |
//! | `X.weight.nested_quant_map` | F32 | (256,): the signed dynamic map, double quantisation only |
//! | `X.weight.quant_state.bitsandbytes__nf4` (or `__fp4`) | U8 | JSON bytes |
//!
//! The JSON is `json.dumps({"quant_type", "blocksize", "dtype", "shape"[, "nested_blocksize",
//! "nested_dtype", "nested_offset"]})` in that order, e.g. `{"quant_type": "nf4", "blocksize":
//! 64, "dtype": "bfloat16", "shape": [128, 128], "nested_blocksize": 256, "nested_dtype":
//! "float32", "nested_offset": 0.0860280990600586}`.

use safetensors::Dtype;

use crate::codes::QuantType;
use crate::double_quant::{double_quant, Nested, NESTED_BLOCKSIZE};
use crate::error::{check_blocksize, QuantError, Result};
use crate::fourbit::{dequantize_4bit_into, quantize_4bit, Packed4};
use temper_pyjson::{py_float_repr, py_string};

/// The block scales of a 4-bit weight.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    /// (blocks,) f32.
    Plain(Vec<f32>),
    /// Double-quantised.
    Nested(Nested),
}

/// A 4-bit weight with everything needed to save it in bitsandbytes' layout or dequantise it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantState {
    pub quant_type: QuantType,
    pub blocksize: usize,
    /// The original weight's shape, e.g. (out, in).
    pub shape: Vec<usize>,
    /// The original weight's torch dtype name: `bfloat16`, `float16` or `float32`.
    pub dtype: String,
    /// (ceil(numel / 2),) two codes per byte.
    pub bytes: Vec<u8>,
    pub absmax: Absmax,
}

/// A tensor to write: name, dtype, shape, little-endian bytes.
pub struct OwnedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A tensor read from a file.
#[derive(Clone)]
pub struct TensorRef<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// The torch dtype names a quantised weight may come from.
pub const SOURCE_DTYPES: [&str; 3] = ["bfloat16", "float16", "float32"];

impl QuantState {
    /// Quantises a weight (values already in f32, converted exactly from `dtype`).
    pub fn quantize(
        values: &[f32],
        shape: &[usize],
        dtype: &str,
        blocksize: usize,
        quant_type: QuantType,
        double: bool,
    ) -> Result<Self> {
        if shape.iter().product::<usize>() != values.len() {
            return Err(QuantError::Length {
                op: "QuantState::quantize",
                what: "the values",
                got: values.len(),
                expected: shape.iter().product(),
            });
        }
        if !SOURCE_DTYPES.contains(&dtype) {
            return Err(QuantError::Invalid {
                op: "QuantState::quantize",
                msg: format!("dtype `{dtype}`: expected one of {SOURCE_DTYPES:?}"),
            });
        }
        let p = quantize_4bit(values, blocksize, quant_type)?;
        let absmax = if double {
            Absmax::Nested(double_quant(&p.absmax)?)
        } else {
            Absmax::Plain(p.absmax)
        };
        Ok(QuantState {
            quant_type,
            blocksize,
            shape: shape.to_vec(),
            dtype: dtype.to_string(),
            bytes: p.bytes,
            absmax,
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    pub fn is_nested(&self) -> bool {
        matches!(self.absmax, Absmax::Nested(_))
    }

    /// The absmax bitsandbytes dequantises with (nested ones recovered in f32).
    pub fn absmax_f32(&self) -> Result<Vec<f32>> {
        match &self.absmax {
            Absmax::Plain(a) => Ok(a.clone()),
            Absmax::Nested(n) => n.dequantize(),
        }
    }

    /// The codes with f32 absmax.
    pub fn packed(&self) -> Result<Packed4> {
        Ok(Packed4 {
            quant_type: self.quant_type,
            blocksize: self.blocksize,
            numel: self.numel(),
            bytes: self.bytes.clone(),
            absmax: self.absmax_f32()?,
        })
    }

    /// The weight in f32 (numel,), as `dequantize_4bit(..., dtype=float32)` gives it.
    pub fn dequantize_to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.numel()];
        self.dequantize_into(&mut out)?;
        Ok(out)
    }

    /// The weight in f32 into `out` (numel,), e.g. a reused scratch buffer.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.numel() {
            return Err(QuantError::Length {
                op: "QuantState::dequantize_into",
                what: "the output",
                got: out.len(),
                expected: self.numel(),
            });
        }
        let absmax = self.absmax_f32()?;
        dequantize_4bit_into(&self.bytes, &absmax, self.blocksize, self.quant_type, out)
    }

    /// The key of the JSON tensor: `quant_state.bitsandbytes__nf4` / `__fp4`.
    pub fn json_key(&self) -> String {
        format!("quant_state.bitsandbytes__{}", self.quant_type.name())
    }

    /// The JSON bytes bitsandbytes writes (`pack_dict_to_tensor`).
    pub fn json(&self) -> String {
        let shape: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        let mut s = format!(
            "{{\"quant_type\": {}, \"blocksize\": {}, \"dtype\": {}, \"shape\": [{}]",
            py_string(self.quant_type.name()),
            self.blocksize,
            py_string(&self.dtype),
            shape.join(", ")
        );
        if let Absmax::Nested(n) = &self.absmax {
            s.push_str(&format!(
                ", \"nested_blocksize\": {NESTED_BLOCKSIZE}, \"nested_dtype\": \"float32\", \
                 \"nested_offset\": {}",
                py_float_repr(n.offset as f64)
            ));
        }
        s.push('}');
        s
    }

    /// The tensors bitsandbytes saves for weight `name` (e.g. `model.layers.0.mlp.up_proj.weight`).
    pub fn tensors(&self, name: &str) -> Vec<OwnedTensor> {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut out = vec![OwnedTensor {
            name: name.to_string(),
            dtype: Dtype::U8,
            shape: vec![self.bytes.len(), 1],
            data: self.bytes.clone(),
        }];
        match &self.absmax {
            Absmax::Plain(a) => out.push(OwnedTensor {
                name: format!("{name}.absmax"),
                dtype: Dtype::F32,
                shape: vec![a.len()],
                data: f32s(a),
            }),
            Absmax::Nested(n) => {
                out.push(OwnedTensor {
                    name: format!("{name}.absmax"),
                    dtype: Dtype::U8,
                    shape: vec![n.codes.len()],
                    data: n.codes.clone(),
                });
                out.push(OwnedTensor {
                    name: format!("{name}.nested_absmax"),
                    dtype: Dtype::F32,
                    shape: vec![n.nested_absmax.len()],
                    data: f32s(&n.nested_absmax),
                });
                out.push(OwnedTensor {
                    name: format!("{name}.nested_quant_map"),
                    dtype: Dtype::F32,
                    shape: vec![256],
                    data: f32s(&n.map[..]),
                });
            }
        }
        out.push(OwnedTensor {
            name: format!("{name}.quant_map"),
            dtype: Dtype::F32,
            shape: vec![16],
            data: f32s(self.quant_type.code()),
        });
        let json = self.json().into_bytes();
        out.push(OwnedTensor {
            name: format!("{name}.{}", self.json_key()),
            dtype: Dtype::U8,
            shape: vec![json.len()],
            data: json,
        });
        out
    }

    /// Reads weight `name` from its tensors; `get` looks a tensor up by full name. Errors
    /// name `path` (the folder) and the tensor.
    pub fn from_tensors<'a>(
        path: &std::path::Path,
        name: &str,
        get: impl Fn(&str) -> Option<TensorRef<'a>>,
    ) -> Result<Self> {
        let bad = |tensor: &str, msg: String| QuantError::Tensor {
            path: path.to_path_buf(),
            name: tensor.to_string(),
            msg,
        };
        let need = |suffix: &str| -> Result<(String, TensorRef<'a>)> {
            let key = if suffix.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{suffix}")
            };
            let t = get(&key).ok_or_else(|| {
                bad(
                    &key,
                    "missing: a bitsandbytes 4-bit weight needs it (was the folder copied whole?)"
                        .into(),
                )
            })?;
            Ok((key, t))
        };

        // The JSON blob says the quant type; find which one is present.
        let (json_key, json_t) = ["nf4", "fp4"]
            .iter()
            .find_map(|q| {
                let k = format!("{name}.quant_state.bitsandbytes__{q}");
                get(&k).map(|t| (k, t))
            })
            .ok_or_else(|| {
                bad(
                    &format!("{name}.quant_state.bitsandbytes__nf4"),
                    "missing (nor an __fp4 one): not a bitsandbytes 4-bit weight".into(),
                )
            })?;
        let meta: serde_json::Value = serde_json::from_slice(json_t.data)
            .map_err(|e| bad(&json_key, format!("not valid JSON: {e}")))?;
        let field = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(&json_key, format!("has no `{k}`")))
        };
        let quant_type = field("quant_type")?
            .as_str()
            .and_then(QuantType::parse)
            .ok_or_else(|| bad(&json_key, "`quant_type` is not \"nf4\" or \"fp4\"".into()))?;
        let blocksize = field("blocksize")?
            .as_u64()
            .ok_or_else(|| bad(&json_key, "`blocksize` is not an integer".into()))?
            as usize;
        check_blocksize("reading a 4-bit weight", blocksize)
            .map_err(|e| bad(&json_key, e.to_string()))?;
        let dtype = field("dtype")?
            .as_str()
            .ok_or_else(|| bad(&json_key, "`dtype` is not a string".into()))?
            .to_string();
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| bad(&json_key, "`shape` is not a list of integers".into()))?;
        let numel: usize = shape.iter().product();
        let blocks = numel.div_ceil(blocksize);

        let (wkey, w) = need("")?;
        if w.dtype != Dtype::U8 {
            return Err(bad(
                &wkey,
                format!(
                    "is {:?}; temper reads 4-bit weights stored as uint8 \
                     (bnb_4bit_quant_storage=uint8, the default)",
                    w.dtype
                ),
            ));
        }
        if w.data.len() != numel.div_ceil(2) {
            return Err(bad(
                &wkey,
                format!(
                    "has {} bytes; shape {shape:?} needs {}",
                    w.data.len(),
                    numel.div_ceil(2)
                ),
            ));
        }
        let (akey, a) = need("absmax")?;
        let f32s = |key: &str, t: TensorRef<'_>, n: usize| -> Result<Vec<f32>> {
            if t.dtype != Dtype::F32 || t.data.len() != n * 4 {
                return Err(bad(
                    key,
                    format!("is {:?} {:?}; expected F32 ({n},)", t.dtype, t.shape),
                ));
            }
            let values: Vec<f32> = t
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            // A NaN or infinite scale turns its whole block into NaN or infinity.
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(bad(
                    key,
                    format!(
                        "holds a non-finite value ({}) at index {i}: the file is damaged or was \
                         saved from a diverged run; use an intact copy of the weights",
                        values[i]
                    ),
                ));
            }
            Ok(values)
        };
        let absmax = if meta.get("nested_offset").is_some() {
            let offset = field("nested_offset")?
                .as_f64()
                .ok_or_else(|| bad(&json_key, "`nested_offset` is not a number".into()))?
                as f32;
            if !offset.is_finite() {
                return Err(bad(
                    &json_key,
                    format!("`nested_offset` is {offset}, not a finite number"),
                ));
            }
            let nb = field("nested_blocksize")?.as_u64();
            if nb != Some(NESTED_BLOCKSIZE as u64) {
                return Err(bad(
                    &json_key,
                    format!("`nested_blocksize` is {nb:?}; bitsandbytes writes 256"),
                ));
            }
            if a.dtype != Dtype::U8 || a.data.len() != blocks {
                return Err(bad(
                    &akey,
                    format!(
                        "is {:?} {:?}; a double-quantised absmax is U8 ({blocks},)",
                        a.dtype, a.shape
                    ),
                ));
            }
            let (nkey, nt) = need("nested_absmax")?;
            let nested_absmax = f32s(&nkey, nt, blocks.div_ceil(NESTED_BLOCKSIZE))?;
            let (mkey, mt) = need("nested_quant_map")?;
            let mut map = Box::new([0.0f32; 256]);
            map.copy_from_slice(&f32s(&mkey, mt, 256)?);
            Absmax::Nested(Nested {
                codes: a.data.to_vec(),
                nested_absmax,
                offset,
                map,
            })
        } else {
            Absmax::Plain(f32s(&akey, a, blocks)?)
        };
        Ok(QuantState {
            quant_type,
            blocksize,
            shape,
            dtype,
            bytes: w.data.to_vec(),
            absmax,
        })
    }
}
