//! The 8-bit AdamW step against bitsandbytes 0.50 itself: `bnb.optim.AdamW8bit` (and, below
//! its 4096-element minimum, the `optimizer_update_8bit_blockwise` op it calls) run on the
//! CPU by `scripts/make_optim8_fixtures.py`. Starting from the same parameter and zero states,
//! every step's codes and absmax must equal bitsandbytes' bit for bit. The parameters may
//! differ in the last bits of an element's update: PyTorch's CPU `sqrt` (MKL) is not
//! correctly rounded for a fraction of inputs, and the denominator goes through it.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use temper_core::{AdamWStep, Backend, CpuBackend};

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bnb_adamw8bit")
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn u8s(st: &SafeTensors, name: &str) -> Vec<u8> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::U8, "{name}");
    t.data().to_vec()
}

fn map(st: &SafeTensors, name: &str) -> [f32; 256] {
    f32s(st, name).try_into().expect("256 values")
}

#[test]
fn steps_match_bitsandbytes() {
    let dir = fixture_dir();
    let bytes = std::fs::read(dir.join("steps.safetensors")).expect("fixture");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases.json"))
            .expect("json");
    let (qmap1, qmap2) = (map(&st, "qmap1"), map(&st, "qmap2"));
    let be = CpuBackend::new();
    let cases = man["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let num = |k: &str| case[k].as_f64().expect(k);
        let n = case["numel"].as_u64().expect("numel") as usize;
        let mut p = be.upload(&f32s(&st, &format!("{name}.param0"))).expect("p");
        let mut m = be.state8_zeros(n, &qmap1, false).expect("m");
        let mut v = be.state8_zeros(n, &qmap2, false).expect("v");
        let (mut worst_rel, mut differing) = (0f64, 0usize);
        for k in 1..=case["steps"].as_u64().expect("steps") {
            let before = be.download(&p).expect("dl");
            let g = be
                .upload(&f32s(&st, &format!("{name}.grad{k}")))
                .expect("g");
            let s = AdamWStep {
                lr: num("lr") as f32,
                beta1: num("beta1") as f32,
                beta2: num("beta2") as f32,
                eps: num("eps") as f32,
                weight_decay: num("weight_decay") as f32,
                step: k,
            };
            be.adamw8bit(&mut p, &g, &mut m, &mut v, s).expect("step");
            let (c1, a1) = be.state8_read(&m).expect("m");
            let (c2, a2) = be.state8_read(&v).expect("v");
            assert_eq!(
                c1,
                u8s(&st, &format!("{name}.state1_{k}")),
                "{name} step {k} codes1"
            );
            assert_eq!(
                a1,
                f32s(&st, &format!("{name}.absmax1_{k}")),
                "{name} step {k} absmax1"
            );
            assert_eq!(
                c2,
                u8s(&st, &format!("{name}.state2_{k}")),
                "{name} step {k} codes2"
            );
            assert_eq!(
                a2,
                f32s(&st, &format!("{name}.absmax2_{k}")),
                "{name} step {k} absmax2"
            );
            // Parameters: the difference relative to the size of bitsandbytes' update.
            let want = f32s(&st, &format!("{name}.param{k}"));
            let got = be.download(&p).expect("dl");
            for ((g, w), b) in got.iter().zip(&want).zip(&before) {
                if g != w {
                    differing += 1;
                    let update = (w - b).abs().max(f32::MIN_POSITIVE) as f64;
                    worst_rel = worst_rel.max((g - w).abs() as f64 / update);
                }
            }
            // Continue from bitsandbytes' parameters, so differences do not accumulate.
            p = be.upload(&want).expect("p");
        }
        println!(
            "{name}: codes and absmax identical; {differing} parameter values differ, by at \
             most {worst_rel:.1e} of their update"
        );
        assert!(
            worst_rel < 1e-5,
            "{name}: parameters differ by {worst_rel:.1e} of the update"
        );
    }
}
