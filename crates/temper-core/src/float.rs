use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

/// The element type of the CPU reference kernels: f32 in production, f64 in gradient checks.
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + num_traits::ToPrimitive
    + AddAssign
    + SubAssign
    + MulAssign
    + Sum
    + Default
    + Debug
    + Send
    + Sync
    + 'static
{
    fn from_f64c(x: f64) -> Self {
        <Self as num_traits::FromPrimitive>::from_f64(x).unwrap_or_else(Self::nan)
    }
    fn to_f64c(self) -> f64 {
        num_traits::ToPrimitive::to_f64(&self).unwrap_or(f64::NAN)
    }
}

impl Float for f32 {}
impl Float for f64 {}
