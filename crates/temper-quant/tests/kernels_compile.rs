//! crates/temper-core/kernels/quant.cu (the CUDA twins of this crate) compiles with NVRTC for
//! every architecture temper supports, and its PTX defines every kernel. Needs only libnvrtc,
//! not a GPU: scripts/test.sh fetches it. Without it the test says it was skipped.

use temper_core::cuda::compile::{compile_uncached, nvrtc_present, ARCHS};

const SOURCE: &str = include_str!("../../temper-core/kernels/quant.cu");

#[test]
fn quant_kernels_compile_for_every_supported_arch() {
    if !nvrtc_present() {
        println!("skipped: NVRTC not found (scripts/test.sh fetches it and sets LD_LIBRARY_PATH)");
        return;
    }
    // Entry points are instantiated per storage type by STORAGE_TYPES in common.cuh.
    let kernels: Vec<String> = [
        "quantize_4bit",
        "quantize_blockwise",
        "dequantize_blockwise",
    ]
    .iter()
    .flat_map(|k| ["f32", "bf16", "f16"].map(|t| format!("{k}_{t}")))
    .collect();
    for (_, arch) in ARCHS {
        let ptx = compile_uncached("quant.cu", SOURCE, arch).unwrap_or_else(|e| panic!("{e}"));
        let target = format!(".target sm_{}", &arch["compute_".len()..]);
        assert!(ptx.contains(&target), "quant.cu for {arch}: no `{target}`");
        for k in &kernels {
            assert!(
                ptx.contains(&format!(".entry {k}(")),
                "quant.cu for {arch} lacks {k}"
            );
        }
        // No fused multiply-add: the CPU twins round every product and sum separately.
        assert!(
            !ptx.contains("fma.rn.f32"),
            "quant.cu for {arch} fuses a multiply-add"
        );
    }
    println!(
        "quant.cu: {} kernels compiled for {} architectures",
        kernels.len(),
        ARCHS.len()
    );
}
