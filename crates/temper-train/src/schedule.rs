//! Learning-rate schedules with linear warmup, as transformers' `get_*_schedule_with_warmup`:
//! the optimizer step with index k (0-based) uses `lr * factor(k)`, so with warmup the first
//! step's rate is 0, exactly as there.

use std::f64::consts::PI;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

impl ScheduleKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "constant" | "constant_with_warmup" => Some(Self::Constant),
            "linear" => Some(Self::Linear),
            "cosine" => Some(Self::Cosine),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl Schedule {
    /// The learning rate of optimizer step `k` (0-based).
    pub fn lr_at(&self, k: u64) -> f64 {
        self.lr * self.factor(k)
    }

    fn factor(&self, k: u64) -> f64 {
        let (k, w, t) = (k as f64, self.warmup_steps as f64, self.total_steps as f64);
        if k < w {
            return k / w.max(1.0);
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((t - k) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (k - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (PI * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_matches_transformers_formulas() {
        let s = Schedule {
            kind: ScheduleKind::Linear,
            lr: 1.0,
            warmup_steps: 4,
            total_steps: 12,
        };
        // transformers: lambda(k) = k/4 for k<4, else (12-k)/8
        let expected = [
            0.0, 0.25, 0.5, 0.75, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        for (k, e) in expected.iter().enumerate() {
            assert!((s.lr_at(k as u64) - e).abs() < 1e-12, "step {k}");
        }
        let c = Schedule {
            kind: ScheduleKind::Cosine,
            ..s
        };
        // halfway through the decay the cosine factor is 0.5
        assert!((c.lr_at(8) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(12).abs() < 1e-12);
        let k = Schedule {
            kind: ScheduleKind::Constant,
            ..s
        };
        assert_eq!(k.lr_at(2), 0.5);
        assert_eq!(k.lr_at(100), 1.0);
    }
}
