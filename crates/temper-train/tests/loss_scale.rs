//! Unscaling loss-scaled gradients gives the unscaled run's norm and clipped gradients, and
//! an overflow is reported instead of stepped on.

use temper_core::{Backend, CpuBackend};
use temper_model::{LoraConfig, LoraParams, ModelConfig, Target};
use temper_train::optimizer::{clip_grad_norm, unscale_and_clip};

fn lora_with_grads(be: &CpuBackend, times: f32) -> LoraParams<CpuBackend> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny/model");
    let cfg = ModelConfig::from_dir(&dir).expect("config");
    let lora_cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        targets: Target::ALL.to_vec(),
    };
    let mut lora = LoraParams::init(be, &cfg, &lora_cfg, 1).expect("lora");
    for (k, p) in lora.params.iter_mut().enumerate() {
        let n = be.len(&p.grad);
        let g: Vec<f32> = (0..n)
            .map(|i| times * (((i * 31 + k * 7) % 23) as f32 / 23.0 - 0.5))
            .collect();
        p.grad = be.upload(&g).expect("upload");
    }
    lora
}

#[test]
fn unscaling_matches_the_unscaled_gradients_and_overflow_is_reported() {
    let be = CpuBackend::new();
    let scale = 1024.0;
    for max_norm in [0.0, 0.5, 1e9] {
        let mut plain = lora_with_grads(&be, 1.0);
        let mut scaled = lora_with_grads(&be, scale);
        let want = clip_grad_norm(&be, &mut plain, max_norm).expect("clip");
        let got = unscale_and_clip(&be, &mut scaled, scale, max_norm)
            .expect("unscale")
            .expect("finite");
        assert!((got - want).abs() <= 1e-6 * want, "norm {got} vs {want}");
        let mut worst = 0f32;
        for (a, b) in plain.params.iter().zip(&scaled.params) {
            let (a, b) = (
                be.download(&a.grad).expect("dl"),
                be.download(&b.grad).expect("dl"),
            );
            for (x, y) in a.iter().zip(&b) {
                worst = worst.max((x - y).abs() / x.abs().max(1e-6));
            }
        }
        assert!(
            worst <= 1e-5,
            "max_norm {max_norm}: gradients differ by {worst:e}"
        );
    }
    let mut overflowed = lora_with_grads(&be, f32::INFINITY);
    assert_eq!(
        unscale_and_clip(&be, &mut overflowed, scale, 1.0).expect("unscale"),
        None
    );
}
