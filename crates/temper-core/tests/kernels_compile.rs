//! Every CUDA kernel compiles with NVRTC for every supported architecture (sm_75 T4 to
//! sm_90 H100/H200). Needs only libnvrtc, not a GPU: `scripts/test.sh` installs it from the
//! package registry, so a kernel that does not compile fails CI on machines without GPUs.

use temper_core::cuda::compile::{compile_uncached, nvrtc_present, nvrtc_version, ARCHS, SOURCES};

/// Sources whose kernels must equal their CPU twins bit for bit.
const BIT_EXACT: &[&str] = &["quant.cu", "dequant.cu"];

#[test]
fn every_kernel_compiles_for_every_supported_arch() {
    assert!(
        nvrtc_present(),
        "libnvrtc.so could not be loaded: run the tests through scripts/test.sh, which installs \
         NVRTC from PyPI (nvidia-cuda-nvrtc) and puts it on LD_LIBRARY_PATH"
    );
    let (major, minor) = nvrtc_version().expect("nvrtc version");
    let mut compiled = 0;
    for (_, arch) in ARCHS {
        for (name, source) in SOURCES {
            let ptx = compile_uncached(name, source, arch).unwrap_or_else(|e| panic!("{e}"));
            // The PTX names the target and defines every extern "C" kernel of the source.
            assert!(
                ptx.contains(&format!(".target sm_{}", &arch["compute_".len()..])),
                "{name} {arch}"
            );
            for line in source
                .lines()
                .filter(|l| l.starts_with("extern \"C\" __global__ void "))
            {
                let kernel = line["extern \"C\" __global__ void ".len()..]
                    .split('(')
                    .next()
                    .unwrap_or_default();
                assert!(
                    ptx.contains(&format!(".entry {kernel}(")),
                    "{name} for {arch} lacks {kernel}"
                );
            }
            // The quantisation kernels round every product and sum as their CPU twins do
            // (bit-exact, not within a tolerance): no fused multiply-add may appear.
            if BIT_EXACT.contains(name) {
                assert!(
                    !ptx.contains("fma.rn.f32"),
                    "{name} for {arch} fuses a multiply-add"
                );
            }
            compiled += 1;
        }
    }
    // The wgmma kernels need sm_90a's architecture-specific features: built for compute_90a
    // (the only target the backend loads them for), they must contain warpgroup products.
    let (name, source) = SOURCES
        .iter()
        .find(|(name, _)| *name == "flash_hopper.cu")
        .expect("flash_hopper.cu in SOURCES");
    let ptx = compile_uncached(name, source, "compute_90a").unwrap_or_else(|e| panic!("{e}"));
    assert!(ptx.contains(".target sm_90a"), "{name} compute_90a");
    assert!(
        ptx.contains("wgmma.mma_async"),
        "{name} for compute_90a has no warpgroup products"
    );
    compiled += 1;
    println!(
        "NVRTC {major}.{minor}: {compiled} kernel sources compiled for {} architectures",
        ARCHS.len()
    );
}
