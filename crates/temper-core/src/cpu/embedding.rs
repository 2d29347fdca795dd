//! Token embedding lookup.
use rayon::prelude::*;

use crate::{Float, Result};

/// out (N, c) = table (V, c) [ids]. An id >= V is an error naming the id; ids are all checked
/// before anything is written.
pub fn embedding_forward<T: Float>(
    out: &mut [T], // (N, c)
    ids: &[u32],   // (N)
    table: &[T],   // (V, c)
    c: usize,
) -> Result<()> {
    crate::checks::embedding("embedding_forward", out.len(), ids, table.len(), c)?;
    out.par_chunks_mut(c)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| {
            let id = id as usize;
            row.copy_from_slice(&table[id * c..(id + 1) * c]);
        });
    Ok(())
}
