//! Dynamic loss scaling for float16 activations (GPUs without bf16, such as the T4), as
//! PyTorch's GradScaler does it: the loss gradient is multiplied by `scale` so that small
//! activation gradients survive float16; LoRA gradients (f32) are divided back before
//! clipping and the optimizer step. A step whose gradients overflowed is skipped and the scale
//! halved; after `growth_interval` finite steps in a row the scale doubles.

/// PyTorch's defaults: initial scale 2^16, halve on overflow, double after 2000 good steps.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    pub scale: f32,
    good_steps: u32,
    growth_interval: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            good_steps: 0,
            growth_interval: 2000,
        }
    }
}

impl LossScaler {
    /// Records whether this step's gradients were finite and adjusts the scale.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale = (self.scale * 0.5).max(1.0);
            self.good_steps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_and_doubles_after_a_run_of_good_steps() {
        let mut s = LossScaler {
            growth_interval: 3,
            ..LossScaler::default()
        };
        s.update(false);
        assert_eq!(s.scale, 32768.0);
        s.update(true);
        s.update(true);
        assert_eq!(s.scale, 32768.0);
        s.update(true);
        assert_eq!(s.scale, 65536.0);
        s.update(true);
        s.update(false);
        s.update(true);
        s.update(true);
        assert_eq!(s.scale, 32768.0, "the run restarts after an overflow");
        for _ in 0..40 {
            s.update(false);
        }
        assert_eq!(s.scale, 1.0, "never below 1");
    }
}
