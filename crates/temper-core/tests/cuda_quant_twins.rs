//! The CUDA quantisation kernels (`kernels/quant.cu`, reached through `Backend::quantize4`)
//! against their CPU twins in temper-quant, which are bit-exact with
//! bitsandbytes' reference ops: packed codes, block scales, nested codes, nested scales and
//! offset must be the same bits, for NF4 and FP4, with and without double quantisation, from
//! f32, bf16 and f16 input, at awkward sizes (odd counts, a partial last block, more than 256
//! blocks with a partial last nested block, all-zero blocks, subnormals). These need an
//! NVIDIA GPU: `cargo test -- --ignored` there.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use temper_core::dtype::encode_le;
use temper_core::{Backend, CudaBackend, DType};
use temper_quant::{int8_vectorwise_quant, Absmax4, Quant4, QuantState, QuantType, Quantize4Spec};

/// temper-quant's result in the backend's layout.
fn cpu_twin(values: &[f32], qt: QuantType, blocksize: usize, double: bool) -> Quant4 {
    let q = QuantState::quantize(values, &[values.len()], "float32", blocksize, qt, double)
        .expect("CPU quantize");
    Quant4::from_state(&q)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Panics with the first difference between the GPU's and the CPU's result.
fn assert_same(what: &str, gpu: &Quant4, cpu: &Quant4) {
    assert_eq!(gpu.numel, cpu.numel, "{what}: numel");
    assert_eq!(bits(&gpu.code), bits(&cpu.code), "{what}: code table");
    if let Some(i) = (0..cpu.bytes.len()).find(|&i| gpu.bytes[i] != cpu.bytes[i]) {
        panic!(
            "{what}: packed byte {i} of {}: GPU {:#04x}, CPU {:#04x}",
            cpu.bytes.len(),
            gpu.bytes[i],
            cpu.bytes[i]
        );
    }
    assert_eq!(gpu.bytes.len(), cpu.bytes.len(), "{what}: packed length");
    match (&gpu.absmax, &cpu.absmax) {
        (Absmax4::Plain(g), Absmax4::Plain(c)) => {
            assert_eq!(bits(g), bits(c), "{what}: absmax");
        }
        (
            Absmax4::Nested {
                codes: gc,
                map: gm,
                nested_absmax: gn,
                nested_blocksize: gb,
                offset: go,
            },
            Absmax4::Nested {
                codes: cc,
                map: cm,
                nested_absmax: cn,
                nested_blocksize: cb,
                offset: co,
            },
        ) => {
            assert_eq!(go.to_bits(), co.to_bits(), "{what}: offset");
            assert_eq!(gb, cb, "{what}: nested blocksize");
            assert_eq!(bits(&gm[..]), bits(&cm[..]), "{what}: nested map");
            assert_eq!(bits(gn), bits(cn), "{what}: nested absmax");
            if let Some(i) = (0..cc.len()).find(|&i| gc[i] != cc[i]) {
                panic!("{what}: nested code {i}: GPU {}, CPU {}", gc[i], cc[i]);
            }
        }
        _ => panic!("{what}: one side is double-quantised, the other not"),
    }
}

/// Values of very different scales per block, with an all-zero block, a block of one
/// repeated value, subnormals and values on the codes' decision thresholds.
fn awkward_values(rng: &mut ChaCha8Rng, n: usize, blocksize: usize, dt: DType) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|i| {
            let scale = 10f32.powi((i / blocksize) as i32 % 9 - 5);
            rng.random_range(-1.0f32..1.0) * scale
        })
        .collect();
    let block = |b: usize| (b * blocksize).min(n)..((b + 1) * blocksize).min(n);
    for i in block(1) {
        v[i] = 0.0;
    }
    for i in block(2) {
        v[i] = -0.375;
    }
    for (k, i) in block(3).enumerate() {
        v[i] = f32::from_bits(1 + k as u32 * 977) * if k % 2 == 0 { 1.0 } else { -1.0 };
    }
    // Midpoints between NF4 codes times a block's absmax of 1.0.
    let mut sorted = *QuantType::Nf4.code();
    sorted.sort_by(f32::total_cmp);
    for (k, i) in block(4).enumerate() {
        v[i] = match k {
            0 => 1.0,
            _ => (sorted[k % 15] + sorted[k % 15 + 1]) * 0.5,
        };
    }
    v.into_iter().map(|x| dt.round(x)).collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn quantize4_on_the_gpu_equals_the_cpu_bit_for_bit() {
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("CUDA backend: {e}"));
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let mut cases = 0;
    // (numel, blocksize): odd counts, partial last blocks, > 256 blocks (several nested
    // blocks, the last one partial), a single value, one block exactly.
    let sizes = [
        (1, 64),
        (64, 64),
        (64 * 37 + 13, 64),
        (64 * 600 + 5, 64),
        (32 * 257, 32),
        (128 * 300 + 127, 128),
        (4096 * 3 + 1, 4096),
        (1024 * 513, 1024),
    ];
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for &(n, bs) in &sizes {
            let values = awkward_values(&mut rng, n, bs, dt);
            let bytes = encode_le(&values, dt);
            for qt in [QuantType::Nf4, QuantType::Fp4] {
                for double in [false, true] {
                    let what = format!("{dt:?} n={n} bs={bs} {qt:?} double={double}");
                    let q = gpu
                        .quantize4(&bytes, dt, &Quantize4Spec::new(qt, bs, double), &what)
                        .unwrap_or_else(|e| panic!("{what}: {e}"))
                        .expect("the CUDA backend quantises on the device");
                    let got = gpu.download_quant4(&q).expect("download");
                    assert_same(&what, &got, &cpu_twin(&values, qt, bs, double));
                    cases += 1;
                }
            }
        }
    }
    println!("quantize4: {cases} cases equal to the CPU twin bit for bit");
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn quantize4_on_the_gpu_refuses_non_finite_values_and_names_the_tensor() {
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("CUDA backend: {e}"));
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut values = vec![0.5f32; 64 * 5 + 3];
        values[64 * 2 + 7] = bad;
        let err = gpu
            .quantize4(
                &encode_le(&values, DType::F32),
                DType::F32,
                &Quantize4Spec::new(QuantType::Nf4, 64, true),
                "model.layers.3.mlp.up_proj.weight",
            )
            .err()
            .unwrap_or_else(|| panic!("{bad} was quantised"));
        let msg = err.to_string();
        assert!(msg.contains("model.layers.3.mlp.up_proj.weight"), "{msg}");
        assert!(msg.contains("block 2"), "{msg}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn quantize4_on_the_gpu_refuses_unsupported_block_sizes() {
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("CUDA backend: {e}"));
    for bs in [16, 48, 8192] {
        let err = gpu
            .quantize4(
                &encode_le(&[1.0; 100], DType::F32),
                DType::F32,
                &Quantize4Spec::new(QuantType::Nf4, bs, false),
                "w",
            )
            .err()
            .unwrap_or_else(|| panic!("blocksize {bs} accepted"));
        assert!(err.to_string().contains("power of two"), "{err}");
    }
}

/// Row-wise int8 on the GPU (`quantize_int8_rows_*`) against its CPU twin: values rounded to
/// float16, then `int8_vectorwise_quant` without outliers (what bitsandbytes' Int8Params
/// stores), codes and row scales bit for bit; rows of very different scales, an all-zero row,
/// a row of one repeated value, values on half-code ties.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn quantize_int8_on_the_gpu_equals_the_cpu_bit_for_bit() {
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("CUDA backend: {e}"));
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    let mut cases = 0;
    for dt in [DType::F32, DType::BF16, DType::F16] {
        for (rows, cols) in [(1, 1), (7, 13), (37, 61), (300, 4099), (1024, 1031)] {
            let mut values: Vec<f32> = (0..rows * cols)
                .map(|i| rng.random_range(-1.0f32..1.0) * 10f32.powi((i / cols) as i32 % 9 - 4))
                .collect();
            if rows > 3 {
                values[cols..2 * cols].fill(0.0);
                values[2 * cols..3 * cols].fill(-0.75);
                // k + 0.5 code steps of a row whose absmax is 127: ties to even.
                for (c, v) in values[3 * cols..4 * cols].iter_mut().enumerate() {
                    *v = if c == 0 {
                        127.0
                    } else {
                        (c % 254) as f32 * 0.5 - 63.0
                    };
                }
            }
            let values: Vec<f32> = values.into_iter().map(|x| dt.round(x)).collect();
            let what = format!("{dt:?} ({rows}, {cols})");
            let q = gpu
                .quantize_int8(&encode_le(&values, dt), dt, rows, cols, &what)
                .unwrap_or_else(|e| panic!("{what}: {e}"))
                .expect("the CUDA backend quantises on the device");
            let got = gpu.download_int8(&q).expect("download");
            let f16: Vec<f32> = values.iter().map(|&x| DType::F16.round(x)).collect();
            let (want, _) = int8_vectorwise_quant(&f16, rows, cols, 0.0).expect("CPU twin");
            if let Some(i) = (0..rows * cols).find(|&i| got.codes[i] != want.codes[i]) {
                panic!(
                    "{what}: code {i} (row {}): GPU {}, CPU {} (value {})",
                    i / cols,
                    got.codes[i],
                    want.codes[i],
                    f16[i]
                );
            }
            assert_eq!(bits(&got.scales), bits(&want.scales), "{what}: scales");
            cases += 1;
        }
    }
    println!("quantize_int8: {cases} cases equal to the CPU twin bit for bit");
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn quantize_int8_on_the_gpu_refuses_values_beyond_float16() {
    let gpu = CudaBackend::new(0).unwrap_or_else(|e| panic!("CUDA backend: {e}"));
    let mut values = vec![0.5f32; 6 * 10];
    values[4 * 10 + 3] = 7e4;
    let err = gpu
        .quantize_int8(
            &encode_le(&values, DType::F32),
            DType::F32,
            6,
            10,
            "layers.2.w",
        )
        .err()
        .expect("7e4 was quantised");
    let msg = err.to_string();
    assert!(msg.contains("layers.2.w") && msg.contains("row 4"), "{msg}");
    assert!(msg.contains("65504"), "{msg}");
}
