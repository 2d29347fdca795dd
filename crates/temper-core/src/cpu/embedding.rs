//! Token embedding lookup.
use rayon::prelude::*;

use crate::error::check_len;
use crate::{CoreError, Float, Result};

/// out (N, c) = table (V, c) [ids]. An id >= V is an error naming the id; ids are all checked
/// before anything is written.
pub fn embedding_forward<T: Float>(
    out: &mut [T], // (N, c)
    ids: &[u32],   // (N)
    table: &[T],   // (V, c)
    c: usize,
) -> Result<()> {
    const OP: &str = "embedding_forward";
    if c == 0 || !table.len().is_multiple_of(c) {
        return Err(CoreError::Invalid {
            op: OP,
            msg: format!(
                "table of {} elements is not a whole number of rows of width {c}",
                table.len()
            ),
        });
    }
    check_len(OP, "out", out.len(), ids.len() * c)?;
    let vocab = table.len() / c;
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(CoreError::Invalid {
            op: OP,
            msg: format!("token id {id} at position {i} is out of range for vocab size {vocab}"),
        });
    }
    out.par_chunks_mut(c)
        .zip(ids.par_iter())
        .for_each(|(row, &id)| {
            let id = id as usize;
            row.copy_from_slice(&table[id * c..(id + 1) * c]);
        });
    Ok(())
}
