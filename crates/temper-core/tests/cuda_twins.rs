//! Every CUDA op against its CPU twin on fresh random inputs at awkward sizes (vocab 8003,
//! lengths that are not multiples of the block sizes, odd head counts), reporting the worst
//! element. Each runs once per storage type (f32, bf16, f16): activations are rounded to the
//! type on both sides, so the comparison measures the op, and 16-bit outputs are held to a
//! tolerance of a few units of their precision. These need an NVIDIA GPU: run them with
//! `cargo test -- --ignored` there.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use temper_core::cuda::PagedMemory;
use temper_core::{AdamWStep, AttnShape, Backend, CpuBackend, CudaBackend, DType, Gemm};
use temper_quant::{Absmax4, Int8Rows, Quant4};

const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

struct Pair {
    cpu: CpuBackend,
    gpu: CudaBackend,
    rng: ChaCha8Rng,
    /// Storage type of the activations under test.
    dt: DType,
}

impl Pair {
    fn new(seed: u64, dt: DType) -> Self {
        let gpu = CudaBackend::with_dtype(0, dt).unwrap_or_else(|e| panic!("CUDA backend: {e}"));
        Pair {
            cpu: CpuBackend::new(),
            gpu,
            rng: ChaCha8Rng::seed_from_u64(seed),
            dt,
        }
    }
    fn random(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| self.rng.random_range(-scale..scale))
            .collect()
    }
    /// An activation: stored as `dt` on the GPU, the same rounded values on the CPU.
    fn up(&self, x: &[f32]) -> (temper_core::cpu::CpuBuf, temper_core::cuda::CudaBuf) {
        let rounded: Vec<f32> = x.iter().map(|&v| self.dt.round(v)).collect();
        (
            self.cpu.upload(&rounded).expect("cpu"),
            self.gpu.upload_as(&rounded, self.dt).expect("gpu"),
        )
    }
    /// A buffer that is f32 whatever the activations are (rstd, lse, RoPE tables).
    fn up32(&self, x: &[f32]) -> (temper_core::cpu::CpuBuf, temper_core::cuda::CudaBuf) {
        (
            self.cpu.upload(x).expect("cpu"),
            self.gpu.upload(x).expect("gpu"),
        )
    }
    /// [`assert_twins`] with the tolerance widened to the storage type: for 16 bits, at
    /// least 4 units of precision of the tensor's largest value plus 2 relative.
    fn twins(&self, what: &str, gpu: &[f32], cpu: &[f32], atol: f32, rtol: f32) {
        let (atol, rtol) = if self.dt == DType::F32 {
            (atol, rtol)
        } else {
            let max = cpu.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let eps = self.dt.epsilon();
            (atol.max(4.0 * eps * max), rtol.max(2.0 * eps))
        };
        assert_twins(&format!("{what} [{}]", self.dt), gpu, cpu, atol, rtol);
    }
}

/// |gpu - cpu| <= atol + rtol |cpu| everywhere; panics naming the worst element.
fn assert_twins(what: &str, gpu: &[f32], cpu: &[f32], atol: f32, rtol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    // The element closest to (or furthest past) its tolerance.
    let mut worst = (0usize, f32::NEG_INFINITY);
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let ratio = if g.is_nan() {
            f32::INFINITY
        } else {
            (g - c).abs() / (atol + rtol * c.abs()).max(f32::MIN_POSITIVE)
        };
        if ratio > worst.1 {
            worst = (i, ratio);
        }
    }
    let (i, ratio) = worst;
    println!(
        "{what}: worst element {i} at {ratio:.3} of its tolerance: gpu {} cpu {} ({} values)",
        gpu[i],
        cpu[i],
        cpu.len()
    );
    assert!(
        ratio <= 1.0,
        "{what}: element {i} differs: gpu {} vs cpu {}",
        gpu[i],
        cpu[i]
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn matmul_all_transposes() {
    for dt in DTYPES {
        matmul_all_transposes_in(dt);
    }
}

fn matmul_all_transposes_in(dt: DType) {
    let mut p = Pair::new(1, dt);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let (m, n, k) = (37, 53, 29);
        let a = p.random(m * k, 1.0);
        let b = p.random(k * n, 1.0);
        let c0 = p.random(m * n, 1.0);
        let g = Gemm {
            m,
            n,
            k,
            ta,
            tb,
            alpha: 0.5,
            beta: 1.0,
        };
        let ((ac, ag), (bc, bg), (mut cc, mut cg)) = (p.up(&a), p.up(&b), p.up(&c0));
        p.cpu.matmul(&mut cc, &ac, &bc, g).expect("cpu");
        p.gpu.matmul(&mut cg, &ag, &bg, g).expect("gpu");
        p.twins(
            &format!("matmul ta={ta} tb={tb}"),
            &p.gpu.download(&cg).expect("dl"),
            &cc,
            1e-5,
            1e-4,
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn elementwise_ops() {
    for dt in DTYPES {
        elementwise_ops_in(dt);
    }
}

fn elementwise_ops_in(dt: DType) {
    let mut p = Pair::new(2, dt);
    let n = 10_007;
    let x = p.random(n, 2.0);
    let y0 = p.random(n, 2.0);
    let (xc, xg) = p.up(&x);
    let (mut yc, mut yg) = p.up(&y0);
    p.cpu.axpy(&mut yc, 0.3, &xc).expect("cpu");
    p.gpu.axpy(&mut yg, 0.3, &xg).expect("gpu");
    p.cpu.scale(&mut yc, -1.5).expect("cpu");
    p.gpu.scale(&mut yg, -1.5).expect("gpu");
    p.twins(
        "axpy+scale",
        &p.gpu.download(&yg).expect("dl"),
        &yc,
        1e-6,
        1e-6,
    );
    let bias = p.random(7, 1.0);
    let (bc, bg) = p.up(&bias);
    let (mut zc, mut zg) = p.up(&x[..7 * 1429]);
    p.cpu.add_bias(&mut zc, &bc, 7).expect("cpu");
    p.gpu.add_bias(&mut zg, &bg, 7).expect("gpu");
    p.twins(
        "add_bias",
        &p.gpu.download(&zg).expect("dl"),
        &zc,
        1e-6,
        1e-6,
    );
    let (sc, sg) = (
        p.cpu.sum_squares(&xc).expect("cpu"),
        p.gpu.sum_squares(&xg).expect("gpu"),
    );
    assert!(
        (sc - sg).abs() <= 1e-5 * sc,
        "sum_squares gpu {sg} cpu {sc}"
    );
    for prob in [0.0, 0.1, 0.5] {
        let (mut dc, mut dg) = p.up(&vec![f32::NAN; n]);
        p.cpu.dropout(&mut dc, &xc, prob, 99).expect("cpu");
        p.gpu.dropout(&mut dg, &xg, prob, 99).expect("gpu");
        p.twins(
            &format!("dropout p={prob}"),
            &p.gpu.download(&dg).expect("dl"),
            &dc,
            0.0,
            1e-6,
        );
    }
    let g = p.random(n, 4.0);
    let u = p.random(n, 2.0);
    let dh = p.random(n, 1.0);
    let ((gc, gg), (uc, ug), (dhc, dhg)) = (p.up(&g), p.up(&u), p.up(&dh));
    let (mut hc, mut hg) = p.up(&vec![0.0; n]);
    p.cpu.swiglu_forward(&mut hc, &gc, &uc).expect("cpu");
    p.gpu.swiglu_forward(&mut hg, &gg, &ug).expect("gpu");
    p.twins(
        "swiglu_forward",
        &p.gpu.download(&hg).expect("dl"),
        &hc,
        1e-6,
        1e-5,
    );
    let (mut dgc, mut dgg) = p.up(&vec![0.0; n]);
    let (mut duc, mut dug) = p.up(&vec![0.0; n]);
    p.cpu
        .swiglu_backward(&mut dgc, &mut duc, &dhc, &gc, &uc)
        .expect("cpu");
    p.gpu
        .swiglu_backward(&mut dgg, &mut dug, &dhg, &gg, &ug)
        .expect("gpu");
    p.twins(
        "swiglu_backward dgate",
        &p.gpu.download(&dgg).expect("dl"),
        &dgc,
        1e-6,
        1e-5,
    );
    p.twins(
        "swiglu_backward dup",
        &p.gpu.download(&dug).expect("dl"),
        &duc,
        1e-6,
        1e-5,
    );
    let (mut hc, mut hg) = p.up(&vec![0.0; n]);
    p.cpu.geglu_forward(&mut hc, &gc, &uc).expect("cpu");
    p.gpu.geglu_forward(&mut hg, &gg, &ug).expect("gpu");
    p.twins(
        "geglu_forward",
        &p.gpu.download(&hg).expect("dl"),
        &hc,
        1e-6,
        1e-5,
    );
    p.cpu
        .geglu_backward(&mut dgc, &mut duc, &dhc, &gc, &uc)
        .expect("cpu");
    p.gpu
        .geglu_backward(&mut dgg, &mut dug, &dhg, &gg, &ug)
        .expect("gpu");
    p.twins(
        "geglu_backward dgate",
        &p.gpu.download(&dgg).expect("dl"),
        &dgc,
        1e-6,
        1e-5,
    );
    p.twins(
        "geglu_backward dup",
        &p.gpu.download(&dug).expect("dl"),
        &duc,
        1e-6,
        1e-5,
    );
    // A column block of one matrix into another (a fused projection's split), the rest of
    // dst untouched: bit for bit.
    let (rows, src_cols, dst_cols) = (37, 29, 50);
    let block = p.random(rows * src_cols, 1.0);
    let (sc, sg) = p.up(&block);
    let before = p.random(rows * dst_cols, 1.0);
    let (mut dc, mut dg) = p.up(&before);
    p.cpu
        .copy_columns(&mut dc, dst_cols, 13, &sc, src_cols, 7, 11, rows)
        .expect("cpu");
    p.gpu
        .copy_columns(&mut dg, dst_cols, 13, &sg, src_cols, 7, 11, rows)
        .expect("gpu");
    assert_twins(
        "copy_columns",
        &p.gpu.download(&dg).expect("dl"),
        &p.cpu.download(&dc).expect("dl"),
        0.0,
        0.0,
    );
    assert!(p
        .gpu
        .copy_columns(&mut dg, dst_cols, 45, &sg, src_cols, 7, 11, rows)
        .is_err());
    let mut fill = p.gpu.zeros(n).expect("gpu");
    p.gpu.fill(&mut fill, 2.5).expect("fill");
    assert!(p.gpu.download(&fill).expect("dl").iter().all(|&v| v == 2.5));
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn embedding_rmsnorm_rope() {
    for dt in DTYPES {
        embedding_rmsnorm_rope_in(dt);
    }
}

fn embedding_rmsnorm_rope_in(dt: DType) {
    let mut p = Pair::new(3, dt);
    let (v, c, n) = (8003, 67, 131);
    let table = p.random(v * c, 1.0);
    let ids: Vec<u32> = (0..n).map(|i| (i * 61 % v) as u32).collect();
    let (tc, tg) = p.up(&table);
    let (mut ec, mut eg) = p.up(&vec![0.0; n * c]);
    p.cpu.embedding_forward(&mut ec, &ids, &tc, c).expect("cpu");
    p.gpu.embedding_forward(&mut eg, &ids, &tg, c).expect("gpu");
    p.twins(
        "embedding",
        &p.gpu.download(&eg).expect("dl"),
        &ec,
        0.0,
        0.0,
    );
    assert!(p
        .gpu
        .embedding_forward(&mut eg, &[v as u32], &tg, c)
        .is_err());

    let x = p.random(n * c, 3.0);
    let w = p.random(c, 1.0);
    let dy = p.random(n * c, 1.0);
    let ((xc, xg), (wc, wg), (dyc, dyg)) = (p.up(&x), p.up(&w), p.up(&dy));
    let (mut yc, mut yg) = p.up(&vec![0.0; n * c]);
    let (mut rc, mut rg) = p.up32(&vec![0.0; n]);
    p.cpu
        .rmsnorm_forward(&mut yc, &mut rc, &xc, &wc, c, 1e-5)
        .expect("cpu");
    p.gpu
        .rmsnorm_forward(&mut yg, &mut rg, &xg, &wg, c, 1e-5)
        .expect("gpu");
    p.twins(
        "rmsnorm_forward",
        &p.gpu.download(&yg).expect("dl"),
        &yc,
        1e-5,
        1e-5,
    );
    p.twins(
        "rmsnorm rstd",
        &p.gpu.download(&rg).expect("dl"),
        &rc,
        1e-6,
        1e-5,
    );
    let (mut dxc, mut dxg) = p.up(&vec![0.0; n * c]);
    p.cpu
        .rmsnorm_backward(&mut dxc, &dyc, &xc, &wc, &rc, c)
        .expect("cpu");
    p.gpu
        .rmsnorm_backward(&mut dxg, &dyg, &xg, &wg, &rg, c)
        .expect("gpu");
    p.twins(
        "rmsnorm_backward",
        &p.gpu.download(&dxg).expect("dl"),
        &dxc,
        1e-5,
        1e-4,
    );

    // Full rotations (d/2 odd: one pair per thread; d/2 a multiple of 8: eight) and partial
    // ones (Phi-3-style rotary factors), whose last d - rot values pass through.
    let (h, positions) = (5, 300);
    let pos: Vec<u32> = (0..n).map(|i| (i * 7 % positions) as u32).collect();
    for (d, rot) in [(22, 22), (64, 64), (22, 10), (64, 32), (128, 96)] {
        let inv = temper_core::rope::inv_freq(rot, 10000.0, None, positions);
        let (cos, sin) = temper_core::rope::tables(&inv, positions);
        let ((cc, cg), (sc, sg)) = (p.up32(&cos), p.up32(&sin));
        let q = p.random(n * h * d, 1.0);
        let (mut qc, mut qg) = p.up(&q);
        p.cpu
            .rope_partial_forward(&mut qc, &pos, &cc, &sc, h, d, rot)
            .expect("cpu");
        p.gpu
            .rope_partial_forward(&mut qg, &pos, &cg, &sg, h, d, rot)
            .expect("gpu");
        p.twins(
            &format!("rope forward d {d} rot {rot}"),
            &p.gpu.download(&qg).expect("dl"),
            &qc,
            1e-6,
            1e-5,
        );
        p.cpu
            .rope_partial_backward(&mut qc, &pos, &cc, &sc, h, d, rot)
            .expect("cpu");
        p.gpu
            .rope_partial_backward(&mut qg, &pos, &cg, &sg, h, d, rot)
            .expect("gpu");
        p.twins(
            &format!("rope backward d {d} rot {rot}"),
            &p.gpu.download(&qg).expect("dl"),
            &qc,
            1e-6,
            1e-5,
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn attention_forward_and_backward() {
    for dt in DTYPES {
        attention_forward_and_backward_in(dt);
    }
}

fn attention_forward_and_backward_in(dt: DType) {
    let mut p = Pair::new(4, dt);
    // GQA 6/2, head dim 40, sequences of 1, 130, 7 and 200 tokens (tiles of 128 split them).
    let (hq, hkv, d) = (6, 2, 40);
    let cu: Vec<u32> = vec![0, 1, 131, 138, 338];
    let n = 338;
    let q = p.random(n * hq * d, 1.0);
    let k = p.random(n * hkv * d, 1.0);
    let v = p.random(n * hkv * d, 1.0);
    let dout = p.random(n * hq * d, 1.0);
    let ((qc, qg), (kc, kg), (vc, vg), (doc, dog)) = (p.up(&q), p.up(&k), p.up(&v), p.up(&dout));
    let (mut oc, mut og) = p.up(&vec![0.0; n * hq * d]);
    let (mut lc, mut lg) = p.up32(&vec![0.0; n * hq]);
    p.cpu
        .attention_forward(
            &mut oc,
            &mut lc,
            &qc,
            &kc,
            &vc,
            &cu,
            AttnShape::new(hq, hkv, d),
            None,
        )
        .expect("cpu");
    p.gpu
        .attention_forward(
            &mut og,
            &mut lg,
            &qg,
            &kg,
            &vg,
            &cu,
            AttnShape::new(hq, hkv, d),
            None,
        )
        .expect("gpu");
    p.twins(
        "attention out",
        &p.gpu.download(&og).expect("dl"),
        &oc,
        1e-5,
        1e-4,
    );
    p.twins(
        "attention lse",
        &p.gpu.download(&lg).expect("dl"),
        &lc,
        1e-5,
        1e-5,
    );
    let (mut dqc, mut dqg) = p.up(&vec![0.0; n * hq * d]);
    let (mut dkc, mut dkg) = p.up(&vec![0.0; n * hkv * d]);
    let (mut dvc, mut dvg) = p.up(&vec![0.0; n * hkv * d]);
    p.cpu
        .attention_backward(
            &mut dqc,
            &mut dkc,
            &mut dvc,
            &doc,
            &qc,
            &kc,
            &vc,
            &oc,
            &lc,
            &cu,
            AttnShape::new(hq, hkv, d),
            None,
        )
        .expect("cpu");
    p.gpu
        .attention_backward(
            &mut dqg,
            &mut dkg,
            &mut dvg,
            &dog,
            &qg,
            &kg,
            &vg,
            &og,
            &lg,
            &cu,
            AttnShape::new(hq, hkv, d),
            None,
        )
        .expect("gpu");
    p.twins(
        "attention dq",
        &p.gpu.download(&dqg).expect("dl"),
        &dqc,
        1e-5,
        1e-3,
    );
    p.twins(
        "attention dk",
        &p.gpu.download(&dkg).expect("dl"),
        &dkc,
        1e-5,
        1e-3,
    );
    p.twins(
        "attention dv",
        &p.gpu.download(&dvg).expect("dl"),
        &dvc,
        1e-5,
        1e-3,
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn fused_linear_cross_entropy() {
    for dt in DTYPES {
        fused_linear_cross_entropy_in(dt);
    }
}

fn fused_linear_cross_entropy_in(dt: DType) {
    let mut p = Pair::new(5, dt);
    let (n, c, v) = (45, 33, 8003);
    let x = p.random(n * c, 1.0);
    let w = p.random(v * c, 0.5);
    let targets: Vec<i32> = (0..n)
        .map(|i| {
            if i % 7 == 3 {
                -100
            } else {
                (i * 977 % v) as i32
            }
        })
        .collect();
    let ((xc, xg), (wc, wg)) = (p.up(&x), p.up(&w));
    let (mut dc, mut dg) = p.up(&vec![f32::NAN; n * c]);
    let lc = p
        .cpu
        .linear_cross_entropy(Some(&mut dc), &xc, &wc, &targets, c, v, 0.125, 16)
        .expect("cpu");
    let lg = p
        .gpu
        .linear_cross_entropy(Some(&mut dg), &xg, &wg, &targets, c, v, 0.125, 16)
        .expect("gpu");
    p.twins("cross-entropy loss", &lg, &lc, 1e-5, 1e-5);
    p.twins(
        "cross-entropy dx",
        &p.gpu.download(&dg).expect("dl"),
        &dc,
        1e-6,
        1e-4,
    );
    let lg2 = p
        .gpu
        .linear_cross_entropy(None, &xg, &wg, &targets, c, v, 1.0, 7)
        .expect("gpu");
    p.twins("cross-entropy chunk 7 vs 16", &lg2, &lg, 1e-6, 1e-6);
    // Gemma 2's final logit soft cap (logits of the 0.5-scaled weights reach about 3, so a
    // cap of 2 bends them hard).
    let (mut dc, mut dg) = p.up(&vec![f32::NAN; n * c]);
    let lc = p
        .cpu
        .linear_cross_entropy_capped(
            Some(&mut dc),
            &xc,
            &wc,
            &targets,
            c,
            v,
            0.125,
            16,
            Some(2.0),
        )
        .expect("cpu");
    let lg = p
        .gpu
        .linear_cross_entropy_capped(
            Some(&mut dg),
            &xg,
            &wg,
            &targets,
            c,
            v,
            0.125,
            16,
            Some(2.0),
        )
        .expect("gpu");
    p.twins("capped cross-entropy loss", &lg, &lc, 1e-5, 1e-5);
    p.twins(
        "capped cross-entropy dx",
        &p.gpu.download(&dg).expect("dl"),
        &dc,
        1e-6,
        1e-4,
    );
    assert!(p
        .gpu
        .linear_cross_entropy_capped(None, &xg, &wg, &targets, c, v, 1.0, 16, Some(-1.0))
        .is_err());
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn adamw_steps() {
    // Parameters, gradients and moments are f32 whatever the activations are.
    let mut p = Pair::new(6, DType::F32);
    let n = 5003;
    let param = p.random(n, 1.0);
    let grads: Vec<Vec<f32>> = (0..3).map(|_| p.random(n, 0.1)).collect();
    let step_of = |step: u64| AdamWStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        step,
    };
    let (mut pc, mut pg) = p.up(&param);
    let (mut mc, mut mg) = p.up(&vec![0.0; n]);
    let (mut vc, mut vg) = p.up(&vec![0.0; n]);
    for (step, grad) in (1..).zip(&grads) {
        let (gc, gg) = p.up(grad);
        let s = step_of(step);
        p.cpu.adamw(&mut pc, &gc, &mut mc, &mut vc, s).expect("cpu");
        p.gpu.adamw(&mut pg, &gg, &mut mg, &mut vg, s).expect("gpu");
    }
    p.twins(
        "adamw param",
        &p.gpu.download(&pg).expect("dl"),
        &pc,
        1e-7,
        1e-5,
    );
    p.twins(
        "adamw m",
        &p.gpu.download(&mg).expect("dl"),
        &mc,
        1e-8,
        1e-5,
    );
    p.twins(
        "adamw v",
        &p.gpu.download(&vg).expect("dl"),
        &vc,
        1e-10,
        1e-5,
    );
    // The same steps with paged moments (paged_adamw_32bit): in mapped host memory, and in
    // managed memory (counted apart from the pool while they live).
    for memory in [
        PagedMemory::Pinned,
        PagedMemory::Managed { each_step: true },
        PagedMemory::Managed { each_step: false },
    ] {
        p.gpu.set_paged_memory(memory);
        let what = format!("adamw with the moments in {memory:?} memory");
        let mut pm = p.gpu.upload(&param).expect("gpu");
        let mut mm = p.gpu.mapped_zeros(n).expect("paged");
        let mut vm = p.gpu.mapped_zeros(n).expect("paged");
        let managed = if matches!(memory, PagedMemory::Managed { .. }) {
            2 * n * 4
        } else {
            0
        };
        assert_eq!(p.gpu.paged_managed_bytes(), managed, "{what}");
        for (step, grad) in (1..).zip(&grads) {
            let gg = p.gpu.upload(grad).expect("gpu");
            p.gpu
                .adamw_mapped(&mut pm, &gg, &mut mm, &mut vm, step_of(step))
                .expect("gpu paged");
        }
        p.twins(
            &format!("{what}: param"),
            &p.gpu.download(&pm).expect("dl"),
            &pc,
            1e-7,
            1e-5,
        );
        p.twins(
            &format!("{what}: v"),
            &p.gpu.mapped_read(&vm).expect("read"),
            &vc,
            1e-10,
            1e-5,
        );
        // A write from the host (a checkpoint's moments coming back) is what the next read
        // and the next step see.
        let back: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
        p.gpu.mapped_write(&mut mm, &back).expect("write");
        assert_eq!(p.gpu.mapped_read(&mm).expect("read"), back, "{what}");
        drop((mm, vm));
        assert_eq!(p.gpu.paged_managed_bytes(), 0, "{what}: freed");
    }
    p.gpu.set_paged_memory(PagedMemory::Pinned);
}

/// The optimizer's one-launch ops over many tensors against one launch per tensor, on the
/// GPU: AdamW (moments on the device, in mapped host memory, in managed memory), the
/// gradient scale, the fill and the copies to 16 bits must give the same bits; the sum of
/// squares differs only in the order its f32 partial sums are added, so it is held to the
/// f64 sum on the host. Lengths around the kernels' chunk of 16,384 values, and a lone value.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn multi_tensor_ops_equal_one_launch_per_tensor() {
    let mut p = Pair::new(12, DType::F32);
    // Whatever TEMPER_MULTI_TENSOR says: the `_all` ops must take the one-launch path here.
    p.gpu.set_multi_tensor(true);
    let lens = [1usize, 7, 3000, 16384, 16385, 40000];
    let step_of = |step: u64| AdamWStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: if step == 2 { 0.0 } else { 0.01 },
        step,
    };
    let params: Vec<Vec<f32>> = lens.iter().map(|&n| p.random(n, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..3)
        .map(|_| lens.iter().map(|&n| p.random(n, 0.1)).collect())
        .collect();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();

    // Moments on the device.
    {
        let gpu = &p.gpu;
        let up = |v: &Vec<f32>| gpu.upload(v).expect("gpu");
        let dl = |b: &temper_core::cuda::CudaBuf| gpu.download(b).expect("dl");
        let (mut one_p, mut all_p): (Vec<_>, Vec<_>) =
            params.iter().map(|x| (up(x), up(x))).unzip();
        let zeros = |n: usize| gpu.zeros(n).expect("gpu");
        let mut one_m: Vec<_> = lens.iter().map(|&n| zeros(n)).collect();
        let mut one_v: Vec<_> = lens.iter().map(|&n| zeros(n)).collect();
        let mut all_m: Vec<_> = lens.iter().map(|&n| zeros(n)).collect();
        let mut all_v: Vec<_> = lens.iter().map(|&n| zeros(n)).collect();
        for (step, g) in (1..).zip(&grads) {
            let g: Vec<_> = g.iter().map(up).collect();
            let s = step_of(step);
            for i in 0..lens.len() {
                gpu.adamw(&mut one_p[i], &g[i], &mut one_m[i], &mut one_v[i], s)
                    .expect("one");
            }
            let mut all: Vec<_> = (all_p.iter_mut().zip(&g).zip(&mut all_m).zip(&mut all_v))
                .map(|(((p, g), m), v)| (p, g, m, v))
                .collect();
            gpu.adamw_all(&mut all, s).expect("all");
        }
        for i in 0..lens.len() {
            for (what, one, all) in [
                ("param", &one_p[i], &all_p[i]),
                ("m", &one_m[i], &all_m[i]),
                ("v", &one_v[i], &all_v[i]),
            ] {
                assert_eq!(
                    bits(dl(all)),
                    bits(dl(one)),
                    "adamw_all {what} of tensor {i}"
                );
            }
        }
    }

    // Moments in mapped host memory, pinned and managed.
    for memory in [
        PagedMemory::Pinned,
        PagedMemory::Managed { each_step: true },
        PagedMemory::Managed { each_step: false },
    ] {
        p.gpu.set_paged_memory(memory);
        let gpu = &p.gpu;
        let up = |v: &Vec<f32>| gpu.upload(v).expect("gpu");
        let dl = |b: &temper_core::cuda::CudaBuf| gpu.download(b).expect("dl");
        let mapped = |n: usize| gpu.mapped_zeros(n).expect("mapped");
        let (mut one_p, mut all_p): (Vec<_>, Vec<_>) =
            params.iter().map(|x| (up(x), up(x))).unzip();
        let mut one_m: Vec<_> = lens.iter().map(|&n| mapped(n)).collect();
        let mut one_v: Vec<_> = lens.iter().map(|&n| mapped(n)).collect();
        let mut all_m: Vec<_> = lens.iter().map(|&n| mapped(n)).collect();
        let mut all_v: Vec<_> = lens.iter().map(|&n| mapped(n)).collect();
        for (step, g) in (1..).zip(&grads) {
            let g: Vec<_> = g.iter().map(up).collect();
            let s = step_of(step);
            for i in 0..lens.len() {
                gpu.adamw_mapped(&mut one_p[i], &g[i], &mut one_m[i], &mut one_v[i], s)
                    .expect("one");
            }
            let mut all: Vec<_> = (all_p.iter_mut().zip(&g).zip(&mut all_m).zip(&mut all_v))
                .map(|(((p, g), m), v)| (p, g, m, v))
                .collect();
            gpu.adamw_mapped_all(&mut all, s).expect("all");
        }
        for i in 0..lens.len() {
            let what = format!("adamw_mapped_all in {memory:?} memory, tensor {i}");
            assert_eq!(bits(dl(&all_p[i])), bits(dl(&one_p[i])), "{what}: param");
            for (one, all) in [(&one_m[i], &all_m[i]), (&one_v[i], &all_v[i])] {
                let (one, all) = (
                    gpu.mapped_read(one).expect("read"),
                    gpu.mapped_read(all).expect("read"),
                );
                assert_eq!(bits(all), bits(one), "{what}: moment");
            }
        }
    }
    p.gpu.set_paged_memory(PagedMemory::Pinned);

    // The gradient scale, and the sum of squares against the host's f64 sum.
    let gpu = &p.gpu;
    let up = |v: &Vec<f32>| gpu.upload(v).expect("gpu");
    let dl = |b: &temper_core::cuda::CudaBuf| gpu.download(b).expect("dl");
    let (mut one, mut all): (Vec<_>, Vec<_>) = grads[0].iter().map(|x| (up(x), up(x))).unzip();
    for b in &mut one {
        gpu.scale(b, 0.37).expect("one");
    }
    let mut refs: Vec<_> = all.iter_mut().collect();
    gpu.scale_all(&mut refs, 0.37).expect("all");
    for i in 0..lens.len() {
        assert_eq!(
            bits(dl(&all[i])),
            bits(dl(&one[i])),
            "scale_all of tensor {i}"
        );
    }
    // The copies in a 16-bit compute type.
    for dt in [DType::BF16, DType::F16] {
        let srcs: Vec<_> = grads[1].iter().map(up).collect();
        let mk = || -> Vec<_> {
            lens.iter()
                .map(|&n| gpu.zeros_as(n, dt).expect("gpu"))
                .collect()
        };
        let (mut one, mut all) = (mk(), mk());
        for (d, src) in one.iter_mut().zip(&srcs) {
            gpu.copy(d, src).expect("one");
        }
        let mut dsts: Vec<_> = all.iter_mut().collect();
        gpu.copy_all(&mut dsts, &srcs.iter().collect::<Vec<_>>())
            .expect("all");
        for i in 0..lens.len() {
            assert_eq!(
                bits(dl(&all[i])),
                bits(dl(&one[i])),
                "copy_all to {dt} of tensor {i}"
            );
        }
    }
    let mut refs: Vec<_> = all.iter_mut().collect();
    gpu.fill_all(&mut refs, -2.5).expect("fill_all");
    for (i, b) in all.iter().enumerate() {
        assert!(dl(b).iter().all(|&x| x == -2.5), "fill_all of tensor {i}");
    }
    let host: f64 = grads[0]
        .iter()
        .flatten()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum();
    let refs: Vec<_> = grads[0].iter().map(up).collect();
    let refs: Vec<_> = refs.iter().collect();
    let got = gpu.sum_squares_all(&refs).expect("sum");
    assert!(
        (got - host).abs() <= 1e-5 * host,
        "sum_squares_all {got} against {host} on the host"
    );
}

/// bitsandbytes' two dynamic maps (signed for the first moment, unsigned for the second), as
/// saved beside the 8-bit AdamW fixture.
fn bnb_maps() -> ([f32; 256], [f32; 256]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bnb_adamw8bit/steps.safetensors");
    let bytes = std::fs::read(&path).expect("fixture");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let map = |name: &str| -> [f32; 256] {
        let v: Vec<f32> = st
            .tensor(name)
            .expect("map")
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        v.try_into().expect("256 values")
    };
    (map("qmap1"), map("qmap2"))
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn adamw8bit_steps() {
    // Every operation of the kernel is rounded as its CPU twin rounds it (explicit rounding
    // intrinsics, fmaf where the CPU fuses), so codes and absmax must be identical and the
    // parameters equal to rounding. Sizes: a partial last block (5003 = 19 * 256 + 139), whole
    // blocks only (4096), one block and a partial one (300), a lone partial block (100).
    let (map1, map2) = bnb_maps();
    let mut p = Pair::new(8, DType::F32);
    for n in [5003, 4096, 300, 100] {
        for (on_host, memory) in [
            (false, PagedMemory::Pinned),
            (true, PagedMemory::Pinned),
            (true, PagedMemory::Managed { each_step: true }),
            (true, PagedMemory::Managed { each_step: false }),
        ] {
            p.gpu.set_paged_memory(memory);
            let what = format!(
                "adamw8bit n={n}{}",
                if on_host {
                    format!(" paged in {memory:?} memory")
                } else {
                    String::new()
                }
            );
            let param = p.random(n, 1.0);
            let (mut pc, mut pg) = p.up32(&param);
            let mut mc = p.cpu.state8_zeros(n, &map1, on_host).expect("cpu m");
            let mut vc = p.cpu.state8_zeros(n, &map2, on_host).expect("cpu v");
            let mut mg = p.gpu.state8_zeros(n, &map1, on_host).expect("gpu m");
            let mut vg = p.gpu.state8_zeros(n, &map2, on_host).expect("gpu v");
            for step in 1..=4 {
                // Gradients whose scale changes from block to block and step to step.
                let mut grad = p.random(n, 0.1);
                for (i, g) in grad.iter_mut().enumerate() {
                    *g *= 1.0 + ((i / 97 + step as usize) % 5) as f32;
                }
                let (gc, gg) = p.up32(&grad);
                let s = AdamWStep {
                    lr: 1e-2,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: if step % 2 == 0 { 0.01 } else { 0.0 },
                    step,
                };
                p.cpu
                    .adamw8bit(&mut pc, &gc, &mut mc, &mut vc, s)
                    .expect("cpu");
                p.gpu
                    .adamw8bit(&mut pg, &gg, &mut mg, &mut vg, s)
                    .expect("gpu");
                let (cm, am) = p.cpu.state8_read(&mc).expect("cpu m");
                let (gm, gam) = p.gpu.state8_read(&mg).expect("gpu m");
                let (cv, av) = p.cpu.state8_read(&vc).expect("cpu v");
                let (gv, gav) = p.gpu.state8_read(&vg).expect("gpu v");
                let first = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y);
                assert_eq!(
                    first(&gm, &cm),
                    None,
                    "{what} step {step}: first-moment codes"
                );
                assert_eq!(
                    first(&gv, &cv),
                    None,
                    "{what} step {step}: second-moment codes"
                );
                assert_twins(&format!("{what} step {step} absmax m"), &gam, &am, 0.0, 0.0);
                assert_twins(&format!("{what} step {step} absmax v"), &gav, &av, 0.0, 0.0);
            }
            assert_twins(
                &format!("{what} param"),
                &p.gpu.download(&pg).expect("dl"),
                &pc,
                1e-7,
                1e-6,
            );
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn attention_decode_and_copy_range() {
    for dt in DTYPES {
        attention_decode_and_copy_range_in(dt);
    }
}

fn attention_decode_and_copy_range_in(dt: DType) {
    let mut p = Pair::new(7, dt);
    // GQA 6/2, head dim 40; 3 new queries after 150 cached positions, in a cache of 170 rows.
    let (hq, hkv, d, past, n, cap) = (6, 2, 40, 150, 3, 170);
    let q = p.random(n * hq * d, 1.0);
    let mut k = p.random(cap * hkv * d, 1.0);
    let mut v = p.random(cap * hkv * d, 1.0);
    // Rows past the filled ones hold NaN: they must never be read.
    for x in k[(past + n) * hkv * d..]
        .iter_mut()
        .chain(v[(past + n) * hkv * d..].iter_mut())
    {
        *x = f32::NAN;
    }
    let ((qc, qg), (kc, kg), (vc, vg)) = (p.up(&q), p.up(&k), p.up(&v));
    let (mut oc, mut og) = p.up(&vec![0.0; n * hq * d]);
    p.cpu
        .attention_decode(&mut oc, &qc, &kc, &vc, past, AttnShape::new(hq, hkv, d))
        .expect("cpu");
    p.gpu
        .attention_decode(&mut og, &qg, &kg, &vg, past, AttnShape::new(hq, hkv, d))
        .expect("gpu");
    p.twins(
        "attention_decode",
        &p.gpu.download(&og).expect("dl"),
        &oc,
        1e-5,
        1e-4,
    );
    assert!(p
        .gpu
        .attention_decode(&mut og, &qg, &kg, &vg, cap - 1, AttnShape::new(hq, hkv, d))
        .is_err());

    let src = p.random(1001, 1.0);
    let dst = p.random(777, 1.0);
    let ((sc, sg), (mut dc, mut dg)) = (p.up(&src), p.up(&dst));
    p.cpu.copy_range(&mut dc, 13, &sc, 500, 300).expect("cpu");
    p.gpu.copy_range(&mut dg, 13, &sg, 500, 300).expect("gpu");
    p.twins(
        "copy_range",
        &p.gpu.download(&dg).expect("dl"),
        &dc,
        0.0,
        0.0,
    );
    assert!(p.gpu.copy_range(&mut dg, 600, &sg, 0, 300).is_err());
}

/// A random 4-bit matrix: odd value count (a last partial block and a half-used last byte).
fn random_quant4(p: &mut Pair, numel: usize, blocksize: usize, nested: bool) -> Quant4 {
    let blocks = numel.div_ceil(blocksize);
    let mut code = [0.0f32; 16];
    for (i, c) in code.iter_mut().enumerate() {
        *c = -1.0 + i as f32 * (2.0 / 15.0);
    }
    let bytes: Vec<u8> = (0..numel.div_ceil(2))
        .map(|_| p.rng.random_range(0..=255u8))
        .collect();
    let absmax = if nested {
        let mut map = Box::new([0.0f32; 256]);
        for (i, m) in map.iter_mut().enumerate() {
            *m = (i as f32 - 127.5) / 127.5;
        }
        Absmax4::Nested {
            codes: (0..blocks).map(|_| p.rng.random_range(0..=255u8)).collect(),
            map,
            nested_absmax: p.random(blocks.div_ceil(256), 1.0),
            nested_blocksize: 256,
            offset: 0.37,
        }
    } else {
        Absmax4::Plain(p.random(blocks, 2.0))
    };
    Quant4 {
        code,
        blocksize,
        numel,
        bytes,
        absmax,
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn dequantize4_plain_and_nested() {
    // Both kernels: dequant4 and dequant4_units (several units of 8 values per thread at the
    // largest size).
    for (dt, units) in DTYPES.iter().flat_map(|&dt| [(dt, false), (dt, true)]) {
        let mut p = Pair::new(8, dt);
        p.gpu.set_dequant_units(units);
        for (numel, blocksize, nested) in [
            (64 * 513 + 37, 64, false),
            (64 * 700 + 5, 64, true),
            (4096 * 3 + 1, 4096, true),
            (64 * 40000 + 13, 64, true),
        ] {
            let q = random_quant4(&mut p, numel, blocksize, nested);
            let qc = p.cpu.upload_quant4(&q).expect("cpu");
            let qg = p.gpu.upload_quant4(&q).expect("gpu");
            let mut oc = p.cpu.zeros(numel).expect("cpu");
            let mut og = p.gpu.zeros_as(numel, dt).expect("gpu");
            p.cpu.dequantize4(&mut oc, &qc).expect("cpu");
            p.gpu.dequantize4(&mut og, &qg).expect("gpu");
            // The CPU result rounded to the storage type: the GPU must match it exactly.
            let want: Vec<f32> = oc.iter().map(|&v| dt.round(v)).collect();
            assert_twins(
                &format!(
                    "dequantize4 {numel} values, blocks of {blocksize}, nested {nested}, \
                     units {units} [{dt}]"
                ),
                &p.gpu.download(&og).expect("dl"),
                &want,
                0.0,
                0.0,
            );
        }
        let mut bad = random_quant4(&mut p, 100, 64, false);
        bad.bytes.pop();
        assert!(p.gpu.upload_quant4(&bad).is_err());
    }
}

/// Random codes over the whole int8 range (-128 included) and row scales of mixed sizes
/// (some zero: an all-zero row).
fn random_int8(p: &mut Pair, rows: usize, cols: usize) -> Int8Rows {
    let codes = (0..rows * cols)
        .map(|_| p.rng.random_range(-128..=127i8))
        .collect();
    let scales = (0..rows)
        .map(|r| {
            if r % 17 == 5 {
                0.0
            } else {
                p.rng.random_range(1e-3f32..4.0) * 10f32.powi(r as i32 % 5 - 2)
            }
        })
        .collect();
    Int8Rows {
        rows,
        cols,
        codes,
        scales,
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn dequantize_int8_rows() {
    for dt in DTYPES {
        let mut p = Pair::new(9, dt);
        // Row lengths that are not multiples of the 8 codes a thread decodes (groups that
        // cross one row end, or several when cols < 8), odd totals leaving a tail, and one
        // shape past the 8192 x 256 threads x 8 codes of one grid-stride pass (16.8M).
        for (rows, cols) in [
            (1, 5),
            (7, 3),
            (37, 61),
            (513, 129),
            (64, 72),
            (3, 8003),
            (4099, 4111),
        ] {
            let q = random_int8(&mut p, rows, cols);
            let qc = p.cpu.upload_int8(&q).expect("cpu");
            let qg = p.gpu.upload_int8(&q).expect("gpu");
            let mut oc = p.cpu.zeros(rows * cols).expect("cpu");
            let mut og = p.gpu.zeros_as(rows * cols, dt).expect("gpu");
            p.cpu.dequantize_int8(&mut oc, &qc).expect("cpu");
            p.gpu.dequantize_int8(&mut og, &qg).expect("gpu");
            // The CPU result rounded to the storage type: the GPU must match it exactly.
            let want: Vec<f32> = oc.iter().map(|&v| dt.round(v)).collect();
            assert_twins(
                &format!("dequantize_int8 ({rows}, {cols}) [{dt}]"),
                &p.gpu.download(&og).expect("dl"),
                &want,
                0.0,
                0.0,
            );
        }
        let mut bad = random_int8(&mut p, 4, 9);
        bad.scales.pop();
        assert!(p.gpu.upload_int8(&bad).is_err());
        let ok = random_int8(&mut p, 4, 9);
        let q = p.gpu.upload_int8(&ok).expect("gpu");
        let mut short = p.gpu.zeros_as(35, dt).expect("gpu");
        assert!(p.gpu.dequantize_int8(&mut short, &q).is_err());
    }
}

/// Weights uploaded as files store them (`upload_stored`: through the pinned staging buffers,
/// converted to the compute dtype on the way) equal the CPU's decoding rounded to the compute
/// dtype, bit for bit, for every stored type, including a tensor larger than one staging
/// buffer (several chunks, the last one partial) and an empty one.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn upload_stored_converts_like_the_cpu() {
    use temper_core::dtype::{decode_le, encode_le};
    for dt in DTYPES {
        let mut p = Pair::new(11, dt);
        for n in [0, 1, 10_007, (64 << 20) / 4 * 3 + 5] {
            let values = p.random(n, 3.0);
            for stored in DTYPES {
                let bytes = encode_le(&values, stored);
                let got = p.gpu.upload_stored(&bytes, stored).expect("upload_stored");
                assert_eq!(p.gpu.dtype(&got), dt);
                let got = p.gpu.download(&got).expect("download");
                let want: Vec<f32> = decode_le(&bytes, stored)
                    .into_iter()
                    .map(|v| dt.round(v))
                    .collect();
                let diff = got
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(got.len(), n);
                assert_eq!(diff, 0, "{stored} -> {dt}, n {n}: {diff} values differ");
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn flash_attention_every_head_dim() {
    for dt in [DType::BF16, DType::F16] {
        for d in [64, 80, 96, 128, 256] {
            // Lengths 1, 7, 63, 65 and 130 in one varlen batch (tiles of 64 and 32 split
            // them unevenly), GQA 4/2, and the same with one kv head per query head.
            flash_attention_case(dt, d, &[0, 1, 8, 71, 136, 266], 4, 2, None, None);
            flash_attention_case(dt, d, &[0, 65, 72], 3, 3, None, None);
            // Sliding windows: of one token, shorter than a row of 16, not a multiple of any
            // tile, and one tile.
            for w in [1, 5, 100, 64] {
                flash_attention_case(dt, d, &[0, 1, 8, 71, 136, 266], 4, 2, Some(w), None);
            }
        }
    }
    // One long sequence that is no multiple of any tile, with and without a window.
    flash_attention_case(DType::BF16, 128, &[0, 4097], 4, 1, None, None);
    flash_attention_case(DType::F16, 64, &[0, 3, 4100], 2, 2, None, None);
    flash_attention_case(DType::BF16, 128, &[0, 4097], 4, 1, Some(1000), None);
    flash_attention_case(DType::F16, 64, &[0, 3, 4100], 2, 2, Some(333), None);
}

/// Gemma 2's soft-capped scores (cap * tanh(s / cap)) in the capped flash kernels, against the
/// CPU's capped attention. A cap of 1.5 over scores of unit spread bends most of them, so a
/// kernel that skipped the cap or its slope in the backward would fail.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test -- --ignored"]
fn flash_attention_soft_capped() {
    for dt in [DType::BF16, DType::F16] {
        // 64: small Gemma 2 shapes (gemma2-tiny), with two query blocks per warp.
        for d in [64, 128, 256] {
            for window in [None, Some(5), Some(16), Some(64)] {
                let cu = [0, 1, 8, 71, 136, 266];
                flash_attention_case(dt, d, &cu, 4, 2, window, Some(1.5));
            }
            flash_attention_case(dt, d, &[0, 48, 96], 4, 1, Some(16), Some(0.5));
            flash_attention_case(dt, d, &[0, 65, 72], 2, 2, None, Some(30.0));
        }
    }
    flash_attention_case(DType::BF16, 256, &[0, 4097], 8, 4, Some(4096), Some(1.5));
    // A head dim without capped kernels is refused with the dims that have them.
    let p = Pair::new(7, DType::BF16);
    let (n, shape) = (8, AttnShape::new(2, 2, 80));
    let q = p
        .gpu
        .upload_as(&vec![0.5; n * 2 * 80], DType::BF16)
        .expect("gpu");
    let mut out = p
        .gpu
        .upload_as(&vec![0.0; n * 2 * 80], DType::BF16)
        .expect("gpu");
    let mut lse = p.gpu.upload_as(&vec![0.0; n * 2], DType::F32).expect("gpu");
    let err = p
        .gpu
        .attention_forward_capped(
            &mut out,
            &mut lse,
            &q,
            &q,
            &q,
            &[0, 8],
            shape,
            None,
            Some(50.0),
        )
        .expect_err("head dim 80 has no capped kernel")
        .to_string();
    assert!(
        err.contains("head dims [64, 128, 256]") && err.contains("head dim 80"),
        "{err}"
    );
}

fn flash_attention_case(
    dt: DType,
    d: usize,
    cu: &[u32],
    hq: usize,
    hkv: usize,
    window: Option<usize>,
    softcap: Option<f32>,
) {
    let mut p = Pair::new(40 + d as u64, dt);
    p.gpu.set_flash_attention(true);
    let applies = match softcap {
        Some(_) => p.gpu.flash_applies_capped(dt, d),
        None => p.gpu.flash_applies(dt, d),
    };
    assert!(
        applies,
        "no flash kernel for {dt} d {d} on {}",
        p.gpu.device_name()
    );
    let n = *cu.last().expect("cu") as usize;
    let shape = AttnShape::new(hq, hkv, d);
    let what = |name: &str| {
        format!("flash {name} d {d} hq {hq} hkv {hkv} cu {cu:?} window {window:?} cap {softcap:?}")
    };
    let q = p.random(n * hq * d, 1.0);
    let k = p.random(n * hkv * d, 1.0);
    let v = p.random(n * hkv * d, 1.0);
    let dout = p.random(n * hq * d, 1.0);
    let ((qc, qg), (kc, kg), (vc, vg), (doc, dog)) = (p.up(&q), p.up(&k), p.up(&v), p.up(&dout));
    // Outputs start as NaN on the GPU so that an unwritten element fails.
    let (mut oc, _) = p.up(&vec![0.0; n * hq * d]);
    let mut og = p
        .gpu
        .upload_as(&vec![f32::NAN; n * hq * d], dt)
        .expect("gpu");
    let (mut lc, mut lg) = p.up32(&vec![f32::NAN; n * hq]);
    p.cpu
        .attention_forward_capped(&mut oc, &mut lc, &qc, &kc, &vc, cu, shape, window, softcap)
        .expect("cpu");
    p.gpu
        .attention_forward_capped(&mut og, &mut lg, &qg, &kg, &vg, cu, shape, window, softcap)
        .expect("gpu");
    p.twins(
        &what("out"),
        &p.gpu.download(&og).expect("dl"),
        &oc,
        1e-5,
        1e-4,
    );
    p.twins(
        &what("lse"),
        &p.gpu.download(&lg).expect("dl"),
        &lc,
        1e-4,
        1e-5,
    );
    let nan = |len: usize| p.gpu.upload_as(&vec![f32::NAN; len], dt).expect("gpu");
    let (mut dqc, _) = p.up(&vec![0.0; n * hq * d]);
    let (mut dkc, _) = p.up(&vec![0.0; n * hkv * d]);
    let (mut dvc, _) = p.up(&vec![0.0; n * hkv * d]);
    let (mut dqg, mut dkg, mut dvg) = (nan(n * hq * d), nan(n * hkv * d), nan(n * hkv * d));
    p.cpu
        .attention_backward_capped(
            &mut dqc, &mut dkc, &mut dvc, &doc, &qc, &kc, &vc, &oc, &lc, cu, shape, window, softcap,
        )
        .expect("cpu");
    let backward = |dq: &mut temper_core::cuda::CudaBuf,
                    dk: &mut temper_core::cuda::CudaBuf,
                    dv: &mut temper_core::cuda::CudaBuf| {
        p.gpu
            .attention_backward_capped(
                dq, dk, dv, &dog, &qg, &kg, &vg, &og, &lg, cu, shape, window, softcap,
            )
            .expect("gpu")
    };
    backward(&mut dqg, &mut dkg, &mut dvg);
    let (dq1, dk1, dv1) = (
        p.gpu.download(&dqg).expect("dl"),
        p.gpu.download(&dkg).expect("dl"),
        p.gpu.download(&dvg).expect("dl"),
    );
    p.twins(&what("dq"), &dq1, &dqc, 1e-5, 1e-3);
    p.twins(&what("dk"), &dk1, &dkc, 1e-5, 1e-3);
    p.twins(&what("dv"), &dv1, &dvc, 1e-5, 1e-3);
    // No atomics: a second backward gives the same bits.
    backward(&mut dqg, &mut dkg, &mut dvg);
    assert!(
        p.gpu.download(&dqg).expect("dl") == dq1
            && p.gpu.download(&dkg).expect("dl") == dk1
            && p.gpu.download(&dvg).expect("dl") == dv1,
        "{}: a second backward differs",
        what("backward")
    );
}
