//! The per-step scalars of the AdamW updates, computed once on the host and shared by the
//! CPU reference (`cpu::adamw`, `cpu::adamw8bit`) and the CUDA kernels, so both devices
//! update with the same f32 values.

use crate::backend::AdamWStep;

/// The f64 a Python config would hold for this f32: its shortest decimal form re-read as
/// f64 (0.9f32 -> 0.9, not 0.899999976...), so the f64 scalar arithmetic matches torch's.
pub fn as_python_float(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// The per-step scalars of AdamW, computed in f64 from Python-rounded hyperparameters as
/// torch does, then rounded to f32. Shared by both devices.
#[derive(Clone, Copy, Debug)]
pub struct Scalars {
    pub decay: f32,
    /// lerp weight 1 - beta1
    pub w1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    /// -lr / (1 - beta1^step)
    pub neg_step_size: f32,
    /// sqrt(1 - beta2^step)
    pub bc2_sqrt: f32,
    pub eps: f32,
    /// 1 when weight decay is on (an i32 for the kernel's argument list).
    pub apply_decay: i32,
}

impl Scalars {
    pub fn new(s: AdamWStep) -> Self {
        let lr = as_python_float(s.lr);
        let (b1, b2) = (as_python_float(s.beta1), as_python_float(s.beta2));
        let (eps, wd) = (as_python_float(s.eps), as_python_float(s.weight_decay));
        // Python: beta ** step with a float step, i.e. C pow().
        let step = s.step as f64;
        Scalars {
            decay: (1.0 - lr * wd) as f32,
            w1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            neg_step_size: (-(lr / (1.0 - b1.powf(step)))) as f32,
            bc2_sqrt: (1.0 - b2.powf(step)).sqrt() as f32,
            eps: eps as f32,
            apply_decay: i32::from(wd != 0.0),
        }
    }
}

/// The per-step scalars of the 8-bit AdamW: torch's AdamW ones plus beta1 itself (the first
/// moment is a multiply and a fused add there, not a lerp).
#[derive(Clone, Copy, Debug)]
pub struct Scalars8 {
    pub adamw: Scalars,
    pub b1: f32,
}

impl Scalars8 {
    pub fn new(s: AdamWStep) -> Self {
        Scalars8 {
            adamw: Scalars::new(s),
            b1: as_python_float(s.beta1) as f32,
        }
    }
}
