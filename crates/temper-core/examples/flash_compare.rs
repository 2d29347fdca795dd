//! Compares the flash kernels of two backends on one H100 or H200: the wgmma kernels of
//! flash_hopper.cu (the default there) against the mma.sync ones of flash_attention.cu
//! (`TEMPER_ATTENTION=flash-mma`), on the same inputs, and prints the largest difference of each output. A
//! diagnostic: it prints numbers and asserts nothing.
//!
//! cargo run --release -p temper-core --example flash_compare -- [hq hkv d] [lengths...]

use temper_core::{AttnShape, Backend, CudaBackend, DType};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>())
        .collect::<Result<_, _>>()?;
    let (hq, hkv, d) = match args.as_slice() {
        [hq, hkv, d, ..] => (*hq, *hkv, *d),
        _ => (4, 2, 128),
    };
    let lengths: Vec<usize> = if args.len() > 3 {
        args[3..].to_vec()
    } else {
        vec![1, 7, 64, 130, 1000]
    };
    // The variable is read when a backend is made.
    std::env::set_var("TEMPER_ATTENTION", "flash");
    let wgmma = CudaBackend::with_dtype(0, DType::BF16)?;
    std::env::set_var("TEMPER_ATTENTION", "flash-mma");
    let mma = CudaBackend::with_dtype(0, DType::BF16)?;
    println!("{} | hq {hq} hkv {hkv} d {d} bf16", wgmma.device_name());
    for &len in &lengths {
        let cu = [0u32, len as u32];
        let fill = |count: usize, seed: usize| -> Vec<f32> {
            (0..count)
                .map(|i| ((i * 7919 + seed * 104729) % 2003) as f32 / 1001.5 - 1.0)
                .collect()
        };
        let (q, k, v, dout) = (
            fill(len * hq * d, 1),
            fill(len * hkv * d, 2),
            fill(len * hkv * d, 3),
            fill(len * hq * d, 4),
        );
        let mut results = vec![];
        for gpu in [&wgmma, &mma] {
            let up = |x: &[f32]| gpu.upload_as(x, DType::BF16);
            let (qg, kg, vg, dg) = (up(&q)?, up(&k)?, up(&v)?, up(&dout)?);
            let mut out = gpu.zeros_as(len * hq * d, DType::BF16)?;
            let mut lse = gpu.zeros(len * hq)?;
            let mut dq = gpu.zeros_as(len * hq * d, DType::BF16)?;
            let mut dk = gpu.zeros_as(len * hkv * d, DType::BF16)?;
            let mut dv = gpu.zeros_as(len * hkv * d, DType::BF16)?;
            gpu.attention_forward(
                &mut out,
                &mut lse,
                &qg,
                &kg,
                &vg,
                &cu,
                AttnShape::new(hq, hkv, d),
                None,
            )?;
            gpu.attention_backward(
                &mut dq,
                &mut dk,
                &mut dv,
                &dg,
                &qg,
                &kg,
                &vg,
                &out,
                &lse,
                &cu,
                AttnShape::new(hq, hkv, d),
                None,
            )?;
            results.push([
                gpu.download(&out)?,
                gpu.download(&lse)?,
                gpu.download(&dq)?,
                gpu.download(&dk)?,
                gpu.download(&dv)?,
            ]);
        }
        let mut line = format!("len {len}:");
        for (i, name) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
            let (a, b) = (&results[0][i], &results[1][i]);
            let (mut worst, mut at, mut scale) = (0f32, 0usize, 0f32);
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                scale = scale.max(y.abs());
                let diff = if x.is_nan() != y.is_nan() {
                    f32::INFINITY
                } else {
                    (x - y).abs()
                };
                if diff > worst {
                    (worst, at) = (diff, j);
                }
            }
            line += &format!(
                " {name} max|diff| {worst:.3e} at {at} (wg {:.4} mma {:.4}, max|mma| {scale:.3})",
                a.get(at).copied().unwrap_or(0.0),
                b.get(at).copied().unwrap_or(0.0)
            );
        }
        println!("{line}");
    }
    Ok(())
}
