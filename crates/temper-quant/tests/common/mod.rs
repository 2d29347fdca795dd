//! The bitsandbytes fixtures (tests/fixtures/bnb, made by scripts/make_bnb_fixtures.py).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bnb")
}

pub struct Ops {
    bytes: Vec<u8>,
    pub manifest: serde_json::Value,
}

impl Ops {
    pub fn load() -> Ops {
        let dir = fixtures();
        let bytes = std::fs::read(dir.join("ops.safetensors")).expect("ops.safetensors");
        let manifest =
            serde_json::from_str(&std::fs::read_to_string(dir.join("ops.json")).expect("ops.json"))
                .expect("ops.json is JSON");
        Ops { bytes, manifest }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("safetensors")
    }

    pub fn has(&self, name: &str) -> bool {
        self.st().names().contains(&name)
    }

    pub fn dtype(&self, name: &str) -> Dtype {
        self.st().tensor(name).expect(name).dtype()
    }

    pub fn raw(&self, name: &str) -> Vec<u8> {
        self.st()
            .tensor(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .data()
            .to_vec()
    }

    /// F32 / BF16 / F16 as f32 (exactly).
    pub fn f32s(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let d = t.data();
        match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => panic!("{name} is {other:?}"),
        }
    }

    pub fn i8s(&self, name: &str) -> Vec<i8> {
        self.raw(name).into_iter().map(|b| b as i8).collect()
    }

    pub fn i64s(&self, name: &str) -> Vec<i64> {
        self.raw(name)
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    }

    pub fn cases(&self, op: &str) -> Vec<serde_json::Value> {
        self.manifest[op].as_array().expect(op).clone()
    }
}

/// Indices where two f32 slices differ bitwise.
pub fn bit_diffs(a: &[f32], b: &[f32]) -> Vec<usize> {
    assert_eq!(a.len(), b.len(), "lengths");
    (0..a.len())
        .filter(|&i| a[i].to_bits() != b[i].to_bits())
        .collect()
}

pub fn shape(c: &serde_json::Value) -> Vec<usize> {
    c["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}
