//! Token embedding lookup.
use crate::{CoreError, Float, Result};

/// out (N, c) = table (V, c) [ids]. An id >= V is an error naming the id.
pub fn embedding_forward<T: Float>(out: &mut [T], ids: &[u32], table: &[T], c: usize) -> Result<()> { todo!() }
