//! General matrix product through the `gemm` crate (multithreaded, f32 and f64).
use gemm::Parallelism;

use crate::backend::Gemm;
use crate::cpu::lit;
use crate::Float;

/// Products with fewer multiply-adds than this run single-threaded: spinning up rayon costs
/// more than it saves (gemm applies its own threshold too, this one skips the pool entirely).
const PARALLEL_FLOPS: usize = 1 << 18;

/// C (m, n) = alpha * op(A) op(B) + beta * C, row-major; see [`Gemm`] for the layouts.
///
/// `beta == 0` never reads C, so C may hold garbage (NaN) on entry. `alpha == 0` or `k == 0`
/// never reads A and B. Panics when a slice length does not match the shapes (the backend
/// checks them first and returns an error instead).
pub fn matmul<T: Float>(
    c: &mut [T], // (m, n)
    a: &[T],     // (m, k), or (k, m) when ta
    b: &[T],     // (k, n), or (n, k) when tb
    g: Gemm,
) {
    let Gemm {
        m,
        n,
        k,
        ta,
        tb,
        alpha,
        beta,
    } = g;
    // The raw-pointer call below relies on these.
    assert_eq!(
        a.len(),
        m * k,
        "matmul: a has {} elements, expected {m}*{k}",
        a.len()
    );
    assert_eq!(
        b.len(),
        k * n,
        "matmul: b has {} elements, expected {k}*{n}",
        b.len()
    );
    assert_eq!(
        c.len(),
        m * n,
        "matmul: c has {} elements, expected {m}*{n}",
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == 0.0 {
        // The product term vanishes: C = beta * C, without reading C when beta == 0.
        if beta == 0.0 {
            c.fill(T::zero());
        } else if beta != 1.0 {
            let beta: T = lit(beta as f64);
            c.iter_mut().for_each(|x| *x *= beta);
        }
        return;
    }
    // Element (i, p) of op(A) lives at i * lhs_rs + p * lhs_cs; likewise for op(B).
    let (lhs_rs, lhs_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (rhs_rs, rhs_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    let parallelism = if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_FLOPS {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above guarantee every (row, col) reached through these strides lies
    // inside its slice; c is exclusively borrowed and does not alias a or b. gemm dispatches
    // on TypeId and supports f32 and f64, the two `Float` types.
    // Note gemm's naming: dst = alpha_g * dst + beta_g * lhs * rhs, i.e. swapped vs BLAS.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.as_ptr(),
            lhs_cs,
            lhs_rs,
            b.as_ptr(),
            rhs_cs,
            rhs_rs,
            lit::<T>(beta as f64),
            lit::<T>(alpha as f64),
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A strided matrix view into a flat buffer: element (r, c) lives at `offset + r*rs + c*cs`.
/// Lets attention multiply one head's rows of a (N, heads, d) buffer in place.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Strided {
    /// A dense row-major (rows, cols) matrix at the start of its buffer.
    pub fn dense(rows: usize, cols: usize) -> Self {
        Strided {
            offset: 0,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The same elements read as the transpose.
    pub fn t(self) -> Self {
        Strided {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Panics unless every element lies inside a buffer of `len` elements.
    fn check(&self, len: usize, name: &str) {
        if self.rows > 0 && self.cols > 0 {
            let last = self.offset + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(
                last < len,
                "gemm_strided: {name} view {self:?} overruns its buffer of {len}"
            );
        }
    }
}

/// dst = alpha * a b + beta * dst on strided views, single-threaded (callers parallelise
/// around it). `beta == 0` does not read dst. The dst view must not map two (r, c) to one
/// element.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided<T: Float>(
    dst: &mut [T],
    dv: Strided,
    a: &[T],
    av: Strided,
    b: &[T],
    bv: Strided,
    alpha: T,
    beta: T,
) {
    assert!(
        av.rows == dv.rows && bv.cols == dv.cols && av.cols == bv.rows,
        "gemm_strided: shapes {av:?} x {bv:?} -> {dv:?}"
    );
    dv.check(dst.len(), "dst");
    if dv.rows == 0 || dv.cols == 0 {
        return;
    }
    if av.cols == 0 {
        // Empty inner dimension: dst = beta * dst.
        for r in 0..dv.rows {
            for c in 0..dv.cols {
                let e = &mut dst[dv.offset + r * dv.rs + c * dv.cs];
                *e = if beta == T::zero() {
                    T::zero()
                } else {
                    beta * *e
                };
            }
        }
        return;
    }
    av.check(a.len(), "a");
    bv.check(b.len(), "b");
    // SAFETY: the checks above keep every addressed element inside its slice; dst is
    // exclusively borrowed, so it aliases neither a nor b; Parallelism::None means no two
    // threads write dst.
    unsafe {
        gemm::gemm(
            dv.rows,
            dv.cols,
            av.cols,
            dst.as_mut_ptr().add(dv.offset),
            dv.cs as isize,
            dv.rs as isize,
            beta != T::zero(),
            a.as_ptr().add(av.offset),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr().add(bv.offset),
            bv.cs as isize,
            bv.rs as isize,
            beta,
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
