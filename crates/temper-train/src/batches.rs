//! Packed rows as the model's input: the one view of a [`Batch`] as the model's
//! [`TokenBatch`].

use temper_data::Batch;
use temper_model::TokenBatch;

/// `b` as the model reads it (borrowed, nothing copied).
pub fn token_batch(b: &Batch) -> TokenBatch<'_> {
    TokenBatch {
        ids: &b.input_ids,
        positions: &b.position_ids,
        cu_seqlens: &b.cu_seqlens,
        targets: &b.targets,
    }
}
