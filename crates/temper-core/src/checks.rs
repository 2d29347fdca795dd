//! Input checks shared by the backends, so the CPU and CUDA twins refuse the same inputs with
//! the same messages.

use crate::error::check_len;
use crate::{AttnShape, CoreError, Gemm, Result};

fn invalid(op: &'static str, msg: String) -> CoreError {
    CoreError::Invalid { op, msg }
}

/// The head layout for q of `q_len` elements: positive sizes, hq a multiple of hkv, q whole
/// tokens of hq*d. Returns the number of tokens.
fn attention_heads(op: &'static str, q_len: usize, shape: AttnShape) -> Result<usize> {
    let AttnShape {
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
    } = shape;
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
    Ok(q_len / (hq * d))
}

/// Attention's inputs, for every backend: the head layout, cu_seqlens (cu[0] = 0,
/// non-decreasing, cu[S] = N with N the number of tokens in q), and k, v (N, hkv, d).
/// Returns the group size hq/hkv and N.
pub fn attention(
    op: &'static str,
    q_len: usize,
    k_len: usize,
    v_len: usize,
    cu_seqlens: &[u32],
    shape: AttnShape,
) -> Result<(usize, usize)> {
    let n = attention_heads(op, q_len, shape)?;
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
    let kv = n * shape.kv_heads * shape.head_dim;
    check_len(op, "k", k_len, kv)?;
    check_len(op, "v", v_len, kv)?;
    Ok((shape.q_heads / shape.kv_heads, n))
}

/// The other buffers of an attention op over N tokens: those of `like_q` hold
/// (N, hq, d) elements, those of `like_kv` (N, hkv, d), and lse (N, hq).
pub fn attention_buffers(
    op: &'static str,
    n: usize,
    shape: AttnShape,
    like_q: &[(&'static str, usize)],
    like_kv: &[(&'static str, usize)],
    lse: usize,
) -> Result<()> {
    let q = n * shape.q_heads * shape.head_dim;
    let kv = n * shape.kv_heads * shape.head_dim;
    for &(name, len) in like_q {
        check_len(op, name, len, q)?;
    }
    for &(name, len) in like_kv {
        check_len(op, name, len, kv)?;
    }
    check_len(op, "lse", lse, n * shape.q_heads)
}

/// Attention against a KV cache: the head layout, out like q (n, hq, d), and caches of whole
/// rows of hkv*d, the same size, holding at least past + n rows. Returns n.
pub fn attention_decode(
    q: usize,
    out: usize,
    k_cache: usize,
    v_cache: usize,
    past: usize,
    shape: AttnShape,
) -> Result<usize> {
    let op = "attention_decode";
    let n = attention_heads(op, q, shape)?;
    check_len(op, "out", out, q)?;
    check_len(op, "v_cache", v_cache, k_cache)?;
    let row = shape.kv_heads * shape.head_dim;
    if !k_cache.is_multiple_of(row) || k_cache / row < past + n {
        return Err(invalid(
            op,
            format!(
                "the cache holds {k_cache} elements, fewer than past + n = {} tokens of \
                 hkv*d = {row}",
                past + n
            ),
        ));
    }
    Ok(n)
}

/// dst[dst_off..dst_off + len] and src[src_off..src_off + len] lie inside their buffers.
pub fn copy_range(
    dst: usize,
    dst_off: usize,
    src: usize,
    src_off: usize,
    len: usize,
) -> Result<()> {
    let fits = |off: usize, total: usize| off.checked_add(len).is_some_and(|end| end <= total);
    if fits(dst_off, dst) && fits(src_off, src) {
        return Ok(());
    }
    Err(invalid(
        "copy_range",
        format!("{len} elements from offset {src_off} of {src} into offset {dst_off} of {dst}"),
    ))
}

/// A sliding attention window: positive when given. Returns the window that changes
/// anything, None when it is at least every sequence's length (plain causal attention then).
pub fn attention_window(
    op: &'static str,
    cu_seqlens: &[u32],
    window: Option<usize>,
) -> Result<Option<usize>> {
    let Some(w) = window else {
        return Ok(None);
    };
    if w == 0 {
        return Err(invalid(
            op,
            "sliding window must be at least 1 token".into(),
        ));
    }
    let longest = cu_seqlens
        .windows(2)
        .map(|s| s[1].saturating_sub(s[0]) as usize)
        .max()
        .unwrap_or(0);
    Ok((w < longest).then_some(w))
}

/// For a backend whose attention has no sliding-window mask: a window that changes nothing
/// (None, or at least every sequence's length) passes; a shorter one is an error that says
/// what to change.
pub fn window_unsupported(
    op: &'static str,
    backend: &str,
    cu_seqlens: &[u32],
    window: Option<usize>,
) -> Result<()> {
    let Some(w) = attention_window(op, cu_seqlens, window)? else {
        return Ok(());
    };
    let longest = cu_seqlens
        .windows(2)
        .map(|s| s[1].saturating_sub(s[0]))
        .max()
        .unwrap_or(0);
    Err(invalid(
        op,
        format!(
            "the model's sliding_window is {w} tokens but a sequence has {longest}: the {backend} \
             attention has no sliding-window mask; keep max_seq_len <= {w} (sliding_window), \
             or train on the CPU (--device cpu)"
        ),
    ))
}

/// Embedding's inputs: a table of whole rows of width c, out sized for the ids, every id
/// inside the vocabulary (all checked before anything is written). Returns the vocab size.
pub fn embedding(
    op: &'static str,
    out_len: usize,
    ids: &[u32],
    table_len: usize,
    c: usize,
) -> Result<usize> {
    if c == 0 || !table_len.is_multiple_of(c) {
        return Err(CoreError::Invalid {
            op,
            msg: format!(
                "table of {table_len} elements is not a whole number of rows of width {c}"
            ),
        });
    }
    check_len(op, "out", out_len, ids.len() * c)?;
    let vocab = table_len / c;
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(CoreError::Invalid {
            op,
            msg: format!("token id {id} at position {i} is out of range for vocab size {vocab}"),
        });
    }
    Ok(vocab)
}

/// RoPE's inputs: an even, positive head dim, x sized (N, h, d), cos/sin tables of whole
/// rows of d/2, and every position inside the tables.
pub fn rope(
    op: &'static str,
    x_len: usize,
    pos: &[u32],
    cos_len: usize,
    sin_len: usize,
    h: usize,
    d: usize,
) -> Result<()> {
    if d == 0 || !d.is_multiple_of(2) || h == 0 {
        return Err(CoreError::Invalid {
            op,
            msg: format!("head_dim {d} must be even and positive, heads {h} positive"),
        });
    }
    check_len(op, "x", x_len, pos.len() * h * d)?;
    let half = d / 2;
    if !cos_len.is_multiple_of(half) {
        return Err(CoreError::Invalid {
            op,
            msg: format!(
                "cos table of {cos_len} elements is not a whole number of rows of d/2 = {half}"
            ),
        });
    }
    check_len(op, "sin", sin_len, cos_len)?;
    let positions = cos_len / half;
    if let Some((t, &p)) = pos
        .iter()
        .enumerate()
        .find(|(_, &p)| p as usize >= positions)
    {
        return Err(CoreError::Invalid {
            op,
            msg: format!(
                "position {p} of token {t} is beyond the {positions} rows of the cos/sin tables"
            ),
        });
    }
    Ok(())
}

/// Checks a partial rotation: `rot` even, positive and at most d; the tables are (P, rot/2).
#[allow(clippy::too_many_arguments)]
pub fn rope_partial(
    op: &'static str,
    x_len: usize,
    pos: &[u32],
    cos_len: usize,
    sin_len: usize,
    h: usize,
    d: usize,
    rot: usize,
) -> Result<()> {
    if rot == 0 || !rot.is_multiple_of(2) || rot > d {
        return Err(CoreError::Invalid {
            op,
            msg: format!("rotated dims {rot} must be even, positive and at most head_dim {d}"),
        });
    }
    check_len(op, "x", x_len, pos.len() * h * d)?;
    // The tables and positions are checked as for a head of `rot` values.
    rope(op, pos.len() * h * rot, pos, cos_len, sin_len, h, rot)
}

/// Column blocks (`Backend::copy_columns`): both blocks inside their rows, and dst and src
/// whole rows of their widths.
#[allow(clippy::too_many_arguments)]
pub fn copy_columns(
    dst_len: usize,
    dst_cols: usize,
    dst_off: usize,
    src_len: usize,
    src_cols: usize,
    src_off: usize,
    width: usize,
    rows: usize,
) -> Result<()> {
    let op = "copy_columns";
    if dst_off.saturating_add(width) > dst_cols || src_off.saturating_add(width) > src_cols {
        return Err(invalid(
            op,
            format!(
                "columns {dst_off}..{} of {dst_cols} (dst) or {src_off}..{} of {src_cols} (src) \
                 are out of range",
                dst_off.saturating_add(width),
                src_off.saturating_add(width)
            ),
        ));
    }
    if Some(dst_len) != rows.checked_mul(dst_cols) || Some(src_len) != rows.checked_mul(src_cols) {
        return Err(invalid(
            op,
            format!(
                "dst holds {dst_len} and src {src_len} elements, expected {rows} rows of \
                 {dst_cols} and {src_cols}"
            ),
        ));
    }
    Ok(())
}

/// A soft cap `cap` on attention scores: s -> cap * tanh(s / cap) (Gemma 2's
/// `attn_logit_softcapping`), applied to the scaled scores before the softmax.
pub fn softcap(op: &'static str, softcap: Option<f32>) -> Result<Option<f32>> {
    match softcap {
        Some(c) if !(c.is_finite() && c > 0.0) => Err(CoreError::Invalid {
            op,
            msg: format!("the soft cap must be a positive number, got {c}"),
        }),
        other => Ok(other),
    }
}

/// A gated activation's forward (SwiGLU, GeGLU): gate, up and h of one length.
pub fn gated_forward(op: &'static str, gate: usize, up: usize, h: usize) -> Result<()> {
    same_len(op, gate, &[("up", up), ("h", h)])
}

/// A gated activation's backward: dh, up, dgate and dup of gate's length.
pub fn gated_backward(
    op: &'static str,
    gate: usize,
    up: usize,
    dh: usize,
    dgate: usize,
    dup: usize,
) -> Result<()> {
    same_len(
        op,
        gate,
        &[("dh", dh), ("up", up), ("dgate", dgate), ("dup", dup)],
    )
}

/// An optimizer step counts from 1 (bias correction divides by 1 - beta^step).
pub fn step_from_one(op: &'static str, step: u64) -> Result<()> {
    if step == 0 {
        return Err(invalid(op, "step counts from 1, got 0".into()));
    }
    Ok(())
}

/// An optimizer step over one tensor, for every backend and state layout: the gradient and
/// both moments (in elements) match the parameter, and the step counts from 1.
pub fn optimizer_step(
    op: &'static str,
    param: usize,
    grad: usize,
    m: usize,
    v: usize,
    step: u64,
) -> Result<()> {
    check_len(op, "grad", grad, param)?;
    check_len(op, "m", m, param)?;
    check_len(op, "v", v, param)?;
    step_from_one(op, step)
}

/// `len` elements are whole rows of width `c` (c > 0).
pub fn rows(op: &'static str, name: &'static str, len: usize, c: usize) -> Result<()> {
    if c > 0 && len.is_multiple_of(c) {
        Ok(())
    } else {
        Err(invalid(
            op,
            format!("`{name}` holds {len} elements, not a whole number of rows of width {c}"),
        ))
    }
}

/// RMSNorm forward's sizes: x (N, c) in whole rows, w (c), y like x, rstd (N).
pub fn rmsnorm_forward(x: usize, w: usize, y: usize, rstd: usize, c: usize) -> Result<()> {
    let op = "rmsnorm_forward";
    rows(op, "x", x, c)?;
    check_len(op, "w", w, c)?;
    check_len(op, "y", y, x)?;
    check_len(op, "rstd", rstd, x / c)
}

/// RMSNorm backward's sizes: x (N, c) in whole rows, w (c), rstd (N), dy and dx like x.
pub fn rmsnorm_backward(
    x: usize,
    w: usize,
    rstd: usize,
    dy: usize,
    dx: usize,
    c: usize,
) -> Result<()> {
    let op = "rmsnorm_backward";
    rows(op, "x", x, c)?;
    check_len(op, "w", w, c)?;
    check_len(op, "rstd", rstd, x / c)?;
    check_len(op, "dy", dy, x)?;
    check_len(op, "dx", dx, x)
}

/// Every buffer of `others` holds `len` elements, as the first operand does (elementwise ops:
/// swiglu, geglu and their backwards).
pub fn same_len(op: &'static str, len: usize, others: &[(&'static str, usize)]) -> Result<()> {
    for &(name, got) in others {
        check_len(op, name, got, len)?;
    }
    Ok(())
}

/// add_bias's sizes: bias (c), y whole rows of c.
pub fn add_bias(y: usize, bias: usize, c: usize) -> Result<()> {
    check_len("add_bias", "bias", bias, c)?;
    rows("add_bias", "y", y, c)
}

/// Dropout's inputs: x like y, p in [0, 1].
pub fn dropout(y: usize, x: usize, p: f32) -> Result<()> {
    check_len("dropout", "x", x, y)?;
    if !(0.0..=1.0).contains(&p) {
        return Err(invalid("dropout", format!("p = {p} is not in [0, 1]")));
    }
    Ok(())
}

/// A matrix product's operands: a (m, k), b (k, n), c (m, n) in elements.
pub fn matmul(a: usize, b: usize, c: usize, g: Gemm) -> Result<()> {
    check_len("matmul", "a", a, g.m * g.k)?;
    check_len("matmul", "b", b, g.k * g.n)?;
    check_len("matmul", "c", c, g.m * g.n)
}

/// The fused LM head and loss: x (N, c), w (V, c), dx like x when given, and every target
/// below V (negative targets are ignored).
pub fn linear_cross_entropy(
    x: usize,
    w: usize,
    dx: Option<usize>,
    targets: &[i32],
    c: usize,
    v: usize,
) -> Result<()> {
    let op = "linear_cross_entropy";
    let n = targets.len();
    check_len(op, "x", x, n * c)?;
    check_len(op, "w", w, v * c)?;
    if let Some(dx) = dx {
        check_len(op, "dx", dx, n * c)?;
    }
    if let Some((i, &t)) = targets
        .iter()
        .enumerate()
        .find(|(_, &t)| t >= 0 && t as usize >= v)
    {
        return Err(invalid(
            op,
            format!("target {t} of token {i} is out of range for vocab size {v}"),
        ));
    }
    Ok(())
}
