//! When training turns NaN or infinite: what holds the non-finite value (a LoRA weight, an
//! optimizer moment) and the likely cause, from the settings, for the error the user sees.

use temper_core::Backend;
use temper_model::LoraParams;

use crate::error::Result;
use crate::optimizer::AdamW;
use crate::trainer::TrainSettings;

/// Why a step's loss is not finite: which state is not, or else whether the LoRA weights have
/// grown too large, or else that the forward pass overflowed on its own.
pub(crate) fn why_loss<B: Backend>(
    be: &B,
    lora: &LoraParams<B>,
    opt: &AdamW<B>,
    s: &TrainSettings,
) -> Result<String> {
    Ok(match non_finite_state(be, lora, opt)? {
        Some(what) => format!("{what}; {}", blame(s, &what)),
        None => match largest_lora_weight(be, lora)? {
            big if big > HUGE_LORA_WEIGHT => format!(
                "LoRA weights have grown to {big:e}; {}",
                blame(s, "LoRA weights")
            ),
            _ => "the LoRA weights and optimizer state are finite and small, so the \
                  forward pass overflowed: check the data and the base model, or train \
                  in float32 or bfloat16 (`dtype`)"
                .to_string(),
        },
    })
}

/// What holds NaN or infinity: a LoRA weight, or the optimizer's moments (32-bit states;
/// 8-bit states are checked through the weights they update). None when all is finite.
pub(crate) fn non_finite_state<B: Backend>(
    be: &B,
    lora: &LoraParams<B>,
    opt: &AdamW<B>,
) -> Result<Option<String>> {
    for (i, p) in lora.params.iter().enumerate() {
        if opt.state8_of(be, i)?.is_none() {
            let (m, v) = opt.moments_of(be, i)?;
            for (name, values) in [("exp_avg", m), ("exp_avg_sq", v)] {
                if values.iter().any(|x| !x.is_finite()) {
                    return Ok(Some(format!(
                        "the optimizer state {name} of `{}` is not finite",
                        p.key
                    )));
                }
            }
        }
        if be.download(&p.value)?.iter().any(|x| !x.is_finite()) {
            return Ok(Some(format!("LoRA weight `{}` is not finite", p.key)));
        }
    }
    Ok(None)
}

/// A LoRA weight this large overflows the forward pass: the updates, not the data, did it.
const HUGE_LORA_WEIGHT: f32 = 1e4;

/// The largest magnitude among the LoRA weights.
fn largest_lora_weight<B: Backend>(be: &B, lora: &LoraParams<B>) -> Result<f32> {
    let mut big = 0f32;
    for p in &lora.params {
        for x in be.download(&p.value)? {
            big = big.max(x.abs());
        }
    }
    Ok(big)
}

/// The likely cause of non-finite state `what`, from the settings.
pub(crate) fn blame(s: &TrainSettings, what: &str) -> String {
    if s.adamw.eps <= 0.0 {
        format!(
            "adam_epsilon is {}: a parameter whose gradient is 0 gets 0 / 0 = NaN; set \
             adam_epsilon to 1e-8",
            s.adamw.eps
        )
    } else if what.starts_with("the optimizer state") && s.resume_from.is_some() {
        "the optimizer state restored from the checkpoint is not usable: resume from an \
         earlier checkpoint"
            .to_string()
    } else {
        format!(
            "the updates overflowed: learning_rate {} is too high (LoRA usually trains at \
             1e-5 to 1e-3)",
            s.learning_rate
        )
    }
}
