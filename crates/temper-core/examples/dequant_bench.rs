//! Times the 4-bit dequantisation of frozen weights on the GPU (NF4, blocks of 64, double
//! quantisation, bf16 out: what every QLoRA projection runs before its GEMM) and prints the
//! memory speed it reaches. A benchmark: it prints numbers and asserts nothing.
//!
//! cargo run --release -p temper-core --example dequant_bench -- [rows cols]...
//! e.g. `-- 4096 4096 11008 4096` (Llama-2-7B's attention and MLP weights).

use std::time::Instant;

use temper_core::{Backend, CudaBackend, DType};
use temper_quant::{QuantType, Quantize4Spec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>())
        .collect::<Result<_, _>>()?;
    let shapes: Vec<(usize, usize)> = if args.len() >= 2 {
        args.chunks_exact(2).map(|p| (p[0], p[1])).collect()
    } else {
        vec![(4096, 4096), (11008, 4096), (14336, 4096)]
    };
    let gpu = CudaBackend::with_dtype(0, DType::BF16)?;
    let spec = Quantize4Spec::new(QuantType::Nf4, 64, true);
    println!(
        "{} | NF4, blocks of 64, double quantisation, bf16 out",
        gpu.device_name()
    );
    println!("| shape | ms per call | GB/s (4-bit codes and scales read, bf16 written) |");
    println!("|---|---|---|");
    for (rows, cols) in shapes {
        let n = rows * cols;
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| ((((i * 7919) % 2003) as f32 / 1001.5 - 1.0) * 0.05).to_le_bytes())
            .collect();
        let q = gpu
            .quantize4(&bytes, DType::F32, &spec, "bench")?
            .ok_or("this backend has no device quantisation")?;
        let mut out = gpu.zeros_as(n, DType::BF16)?;
        for _ in 0..3 {
            gpu.dequantize4(&mut out, &q)?;
        }
        gpu.synchronize()?;
        let reps = 50;
        let t = Instant::now();
        for _ in 0..reps {
            gpu.dequantize4(&mut out, &q)?;
        }
        gpu.synchronize()?;
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        // Codes (n / 2), one code byte per block of 64, nested scales (negligible), bf16 out.
        let moved = n as f64 / 2.0 + n as f64 / 64.0 + 2.0 * n as f64;
        println!(
            "| {rows} x {cols} | {ms:.4} | {:.0} |",
            moved / (ms * 1e-3) / 1e9
        );
    }
    Ok(())
}
