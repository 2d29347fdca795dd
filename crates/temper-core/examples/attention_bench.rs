//! Times causal attention forward and backward on the GPU, flash kernels against the GEMM /
//! direct paths, one sequence per length, and prints a table (milliseconds, TFLOP/s of the
//! causal half of the products). A benchmark: it prints numbers and asserts nothing.
//!
//! cargo run --release -p temper-core --example attention_bench -- [hq hkv d] [lengths...]
//! e.g. `-- 32 8 128 512 4096 16384` (Llama-3-8B's heads).

use std::time::Instant;

use temper_core::{AttnShape, Backend, CudaBackend, DType};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>())
        .collect::<Result<_, _>>()?;
    let (hq, hkv, d) = match args.as_slice() {
        [hq, hkv, d, ..] => (*hq, *hkv, *d),
        _ => (32, 8, 128),
    };
    let lengths: Vec<usize> = if args.len() > 3 {
        args[3..].to_vec()
    } else {
        vec![64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
    };
    let mut gpu = CudaBackend::with_dtype(0, DType::BF16)?;
    gpu.set_flash_attention(true);
    println!(
        "{} | hq {hq} hkv {hkv} d {d} bf16 | flash kernels: {}",
        gpu.device_name(),
        gpu.flash_applies(DType::BF16, d)
    );
    println!("| tokens | path | forward ms | backward ms | fwd TFLOP/s | bwd TFLOP/s |");
    println!("|---|---|---|---|---|---|");
    for &len in &lengths {
        // About 16k tokens per timed call for short sequences: several sequences of `len`.
        let seqs = (16384 / len).max(1);
        let n = seqs * len;
        let cu: Vec<u32> = (0..=seqs).map(|s| (s * len) as u32).collect();
        let fill = |count: usize, seed: usize| -> Vec<f32> {
            (0..count)
                .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5 - 1.0) * 0.5)
                .collect()
        };
        let q = gpu.upload_as(&fill(n * hq * d, 1), DType::BF16)?;
        let k = gpu.upload_as(&fill(n * hkv * d, 2), DType::BF16)?;
        let v = gpu.upload_as(&fill(n * hkv * d, 3), DType::BF16)?;
        let dout = gpu.upload_as(&fill(n * hq * d, 4), DType::BF16)?;
        let mut out = gpu.zeros_as(n * hq * d, DType::BF16)?;
        let mut lse = gpu.zeros(n * hq)?;
        let mut dq = gpu.zeros_as(n * hq * d, DType::BF16)?;
        let mut dk = gpu.zeros_as(n * hkv * d, DType::BF16)?;
        let mut dv = gpu.zeros_as(n * hkv * d, DType::BF16)?;
        // Causal products: forward 2 (S, PV), backward 5, each 2 L^2/2 d per head.
        let unit = seqs as f64 * (len as f64) * (len as f64) * d as f64 * hq as f64;
        for flash in [true, false] {
            gpu.set_flash_attention(flash);
            let reps = if len >= 8192 { 3 } else { 5 };
            let mut fwd = vec![];
            let mut bwd = vec![];
            for _ in 0..reps + 1 {
                gpu.synchronize()?;
                let t = Instant::now();
                gpu.attention_forward(
                    &mut out,
                    &mut lse,
                    &q,
                    &k,
                    &v,
                    &cu,
                    AttnShape::new(hq, hkv, d),
                    None,
                )?;
                gpu.synchronize()?;
                fwd.push(t.elapsed().as_secs_f64());
                let t = Instant::now();
                gpu.attention_backward(
                    &mut dq,
                    &mut dk,
                    &mut dv,
                    &dout,
                    &q,
                    &k,
                    &v,
                    &out,
                    &lse,
                    &cu,
                    AttnShape::new(hq, hkv, d),
                    None,
                )?;
                gpu.synchronize()?;
                bwd.push(t.elapsed().as_secs_f64());
            }
            let median = |mut v: Vec<f64>| {
                v.remove(0); // warm-up
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (f, b) = (median(fwd), median(bwd));
            println!(
                "| {seqs} x {len} | {} | {:.3} | {:.3} | {:.0} | {:.0} |",
                if flash { "flash" } else { "gemm/direct" },
                f * 1e3,
                b * 1e3,
                2.0 * unit / f / 1e12,
                5.0 * unit / b / 1e12
            );
        }
    }
    Ok(())
}
