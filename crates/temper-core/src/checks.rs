//! Input checks shared by the backends, so the CPU and CUDA twins refuse the same inputs with
//! the same messages.

use crate::{CoreError, Result};

fn invalid(op: &'static str, msg: String) -> CoreError {
    CoreError::Invalid { op, msg }
}

/// Attention's inputs, for every backend: checks head counts and cu_seqlens (cu[0] = 0, non-decreasing, cu[S] = N with N the
/// number of tokens in q). Returns the group size hq/hkv and N.
pub fn attention(
    op: &'static str,
    q_len: usize,
    cu_seqlens: &[u32],
    hq: usize,
    hkv: usize,
    d: usize,
) -> Result<(usize, usize)> {
    if hq == 0 || hkv == 0 || d == 0 {
        return Err(invalid(
            op,
            format!("hq {hq}, hkv {hkv} and d {d} must be positive"),
        ));
    }
    if !hq.is_multiple_of(hkv) {
        return Err(invalid(
            op,
            format!("hq {hq} is not a multiple of hkv {hkv}"),
        ));
    }
    if !q_len.is_multiple_of(hq * d) {
        return Err(invalid(
            op,
            format!(
                "q holds {} elements, not a whole number of tokens of hq*d = {}",
                q_len,
                hq * d
            ),
        ));
    }
    let n = q_len / (hq * d);
    match cu_seqlens {
        [] => {
            return Err(invalid(
                op,
                "cu_seqlens is empty (it needs S+1 offsets)".into(),
            ))
        }
        [first, ..] if *first != 0 => {
            return Err(invalid(op, format!("cu_seqlens[0] = {first}, expected 0")))
        }
        [.., last] if *last as usize != n => {
            return Err(invalid(
                op,
                format!("cu_seqlens ends at {last} but q holds {n} tokens"),
            ))
        }
        _ => {}
    }
    if let Some(s) = cu_seqlens.windows(2).position(|w| w[1] < w[0]) {
        return Err(invalid(
            op,
            format!(
                "cu_seqlens decreases at {}: {} > {}",
                s + 1,
                cu_seqlens[s],
                cu_seqlens[s + 1]
            ),
        ));
    }
    Ok((hq / hkv, n))
}
