//! AdamW with its moments in host memory (paged_adamw_32bit) takes the same steps as with
//! the moments on the device, and its moments round-trip through a checkpoint's accessors.

use temper_core::{Backend, CpuBackend};
use temper_model::{LoraConfig, LoraParams, ModelConfig, Target};
use temper_train::{AdamW, AdamWConfig};

fn tiny_config() -> ModelConfig {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny/model");
    ModelConfig::from_dir(&dir).expect("config")
}

#[test]
fn moments_on_host_step_like_moments_on_the_device() {
    let be = CpuBackend::new();
    let cfg = tiny_config();
    let lora_cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        use_rslora: false,
        targets: Target::ALL.to_vec(),
    };
    let mut a = LoraParams::init(&be, &cfg, &lora_cfg, 3).expect("lora");
    let mut b = LoraParams::init(&be, &cfg, &lora_cfg, 3).expect("lora");
    let config = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let mut on_device = AdamW::new(&be, &a, config).expect("adamw");
    let mut on_host = AdamW::new(
        &be,
        &b,
        AdamWConfig {
            on_host: true,
            ..config
        },
    )
    .expect("adamw");
    for step in 0..4 {
        for (pa, pb) in a.params.iter_mut().zip(b.params.iter_mut()) {
            let n = be.len(&pa.grad);
            let g: Vec<f32> = (0..n)
                .map(|i| ((i * 37 + step * 11) % 17) as f32 / 17.0 - 0.5)
                .collect();
            pa.grad = be.upload(&g).expect("upload");
            pb.grad = be.upload(&g).expect("upload");
        }
        on_device.update(&be, &mut a, 1e-2).expect("update");
        on_host.update(&be, &mut b, 1e-2).expect("update");
    }
    let mut compared = 0;
    for (i, (pa, pb)) in a.params.iter().zip(&b.params).enumerate() {
        assert_eq!(
            be.download(&pa.value).expect("dl"),
            be.download(&pb.value).expect("dl"),
            "{}",
            pa.key
        );
        assert_eq!(
            on_device.moments_of(&be, i).expect("moments"),
            on_host.moments_of(&be, i).expect("moments")
        );
        compared += be.len(&pa.value);
    }
    assert!(compared > 1000);
}
