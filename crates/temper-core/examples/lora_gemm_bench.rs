//! Times the six GEMMs of a LoRA linear layer's step on the GPU, as `linear.rs` calls them
//! (bf16 activations and adapter copies, f32 adapter gradients), and prints each one's time
//! and the memory speed its large operands imply. These products are skinny (one side is the
//! rank), so memory, not arithmetic, bounds them. A benchmark: it prints numbers and asserts
//! nothing.
//!
//! cargo run --release -p temper-core --example lora_gemm_bench -- [tokens in out rank]
//! e.g. `-- 4096 4096 11008 16` (Llama-2-7B's gate projection at 1,024 x 4 tokens).

use std::time::Instant;

use temper_core::{Backend, CudaBackend, DType, Gemm};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>())
        .collect::<Result<_, _>>()?;
    let (n, d_in, d_out, r) = match args.as_slice() {
        [n, i, o, r, ..] => (*n, *i, *o, *r),
        _ => (4096, 4096, 4096, 16),
    };
    let gpu = CudaBackend::with_dtype(0, DType::BF16)?;
    let fill = |count: usize, seed: usize| -> Vec<f32> {
        (0..count)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5 - 1.0) * 0.5)
            .collect()
    };
    let x = gpu.upload_as(&fill(n * d_in, 1), DType::BF16)?; // (n, in)
    let dy = gpu.upload_as(&fill(n * d_out, 2), DType::BF16)?; // (n, out)
    let a = gpu.upload_as(&fill(r * d_in, 3), DType::BF16)?; // (r, in)
    let b = gpu.upload_as(&fill(d_out * r, 4), DType::BF16)?; // (out, r)
    let mut xa = gpu.zeros_as(n * r, DType::BF16)?; // (n, r)
    let mut y = gpu.zeros_as(n * d_out, DType::BF16)?; // (n, out)
    let mut dx = gpu.zeros_as(n * d_in, DType::BF16)?; // (n, in)
    let mut da = gpu.zeros(r * d_in)?; // (r, in) f32
    let mut db = gpu.zeros(d_out * r)?; // (out, r) f32
    let mut dxa = gpu.zeros_as(n * r, DType::BF16)?; // (n, r)
    let t = gpu.upload_as(&fill(n * r, 5), DType::BF16)?; // (n, r): xa or dxa as read
    println!(
        "{} | tokens {n}, in {d_in}, out {d_out}, rank {r}, bf16 (gradients f32)",
        gpu.device_name()
    );
    println!("| product | us per call | GB/s of its large operands |");
    println!("|---|---|---|");
    let (big_x, big_y) = ((2 * n * d_in) as f64, (2 * n * d_out) as f64);
    type Run<'a> = Box<dyn FnMut(&CudaBackend) -> temper_core::Result<()> + 'a>;
    let cases: Vec<(&str, f64, Run)> = vec![
        (
            "xa = x A^T",
            big_x,
            Box::new(|g| g.matmul(&mut xa, &x, &a, Gemm::nt(n, r, d_in))),
        ),
        (
            "y = s xa B^T",
            big_y,
            Box::new(|g| g.matmul(&mut y, &t, &b, Gemm::nt(n, d_out, r))),
        ),
        (
            "dB += s dy^T xa",
            big_y,
            Box::new(|g| g.matmul(&mut db, &dy, &t, Gemm::tn(d_out, r, n).beta(1.0))),
        ),
        (
            "dxa = s dy B",
            big_y,
            Box::new(|g| g.matmul(&mut dxa, &dy, &b, Gemm::nn(n, r, d_out))),
        ),
        (
            "dA += dxa^T x",
            big_x,
            Box::new(|g| g.matmul(&mut da, &t, &x, Gemm::tn(r, d_in, n).beta(1.0))),
        ),
        (
            "dx = dxa A + dx",
            2.0 * big_x,
            Box::new(|g| g.matmul(&mut dx, &t, &a, Gemm::nn(n, d_in, r).beta(1.0))),
        ),
    ];
    for (name, bytes, mut run) in cases {
        for _ in 0..3 {
            run(&gpu)?;
        }
        gpu.synchronize()?;
        let reps = 100;
        let t = Instant::now();
        for _ in 0..reps {
            run(&gpu)?;
        }
        gpu.synchronize()?;
        let us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
        println!("| {name} | {us:.1} | {:.0} |", bytes / (us * 1e-6) / 1e9);
    }
    Ok(())
}
