//! Every supported GGML type against gguf-py's `quants.dequantize` of the same bytes, and the
//! reader against the metadata `scripts/make_gguf_fixtures.py` wrote.

use std::path::PathBuf;

use safetensors::SafeTensors;
use temper_gguf::{GgmlType, GgufFile, Value};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

#[test]
fn every_type_matches_gguf_py() {
    let file = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    let ref_bytes = std::fs::read(fixtures().join("quants_reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&ref_bytes).unwrap();
    for ty in GgmlType::SUPPORTED {
        let name = ty.name();
        let t = file
            .tensor(&name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"));
        assert_eq!(t.ty, ty, "{name}");
        let want_view = reference.tensor(&name).unwrap();
        assert_eq!(t.shape(), want_view.shape(), "{name}: shape");
        let want: Vec<f32> = want_view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let got = file.tensor_f32(t).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: length");
        // Both sides compute d * q (+ m) in f32 from the same f16 scales: equal up to the
        // rounding of a different operation order.
        let (mut worst, mut at) = (0f32, 0);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let err = (g - w).abs() / (1e-6 + w.abs());
            if err > worst {
                (worst, at) = (err, i);
            }
        }
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        println!(
            "{name:5}: {} values, max |ref| {scale:.3e}, worst rel err {worst:.2e} at {at}",
            got.len()
        );
        assert!(
            worst <= 1e-6,
            "{name}: element {at}: got {} want {} (rel err {worst:e})",
            got[at],
            want[at]
        );
        assert!(
            scale > 0.0,
            "{name}: the reference is all zeros, the test would prove nothing"
        );
    }
}

#[test]
fn metadata_of_every_value_type() {
    let file = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.alignment, 64);
    let get = |k: &str| file.get(k).unwrap_or_else(|| panic!("no key {k}")).clone();
    assert_eq!(get("test.u8"), Value::U8(200));
    assert_eq!(get("test.i8"), Value::I8(-100));
    assert_eq!(get("test.u16"), Value::U16(60000));
    assert_eq!(get("test.i16"), Value::I16(-30000));
    assert_eq!(get("test.u32"), Value::U32(4_000_000_000));
    assert_eq!(get("test.i32"), Value::I32(-2_000_000_000));
    assert_eq!(get("test.f32"), Value::F32(0.25));
    assert_eq!(get("test.bool"), Value::Bool(true));
    assert_eq!(get("test.string"), Value::String("héllo ✓".into()));
    assert_eq!(get("test.u64"), Value::U64((1 << 63) + 5));
    assert_eq!(get("test.i64"), Value::I64(-(1 << 62)));
    assert_eq!(get("test.f64"), Value::F64(-1.5e300));
    assert_eq!(
        get("test.arr_i32"),
        Value::Array(vec![Value::I32(1), Value::I32(-2), Value::I32(3)])
    );
    assert_eq!(
        file.opt_strings("test.arr_str").unwrap().unwrap(),
        vec!["a", "", "ß€"]
    );
    assert_eq!(file.str("general.architecture").unwrap(), "llama");
    let e = file.u64("test.string").unwrap_err().to_string();
    assert!(
        e.contains("quants.gguf") && e.contains("test.string"),
        "{e}"
    );
}

#[test]
fn version_2_reads_the_same() {
    // GGUF v2 and v3 share the little-endian layout; only the version field differs.
    let mut bytes = std::fs::read(fixtures().join("quants.gguf")).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let v2 = GgufFile::open(&path).unwrap();
    let v3 = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    assert_eq!(v2.version, 2);
    let t2 = v2.tensor("Q6_K").unwrap();
    let t3 = v3.tensor("Q6_K").unwrap();
    assert_eq!(v2.tensor_f32(t2).unwrap(), v3.tensor_f32(t3).unwrap());
}

#[test]
fn truncated_file_names_the_tensor() {
    let bytes = std::fs::read(fixtures().join("quants.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let e = GgufFile::open(&path).err().unwrap().to_string();
    assert!(
        e.contains("cut.gguf") && e.contains("truncated") && e.contains("Q6_K"),
        "{e}"
    );
}
