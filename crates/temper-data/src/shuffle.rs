//! The order in which rows are visited each epoch.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A permutation of `0..n`, the same for the same `(seed, epoch)` on every machine and
/// every rand version: ChaCha8 seeded with `seed`, stream `epoch`, and a Fisher-Yates
/// shuffle written here (not `SliceRandom`, whose algorithm may change between releases).
pub fn shuffled_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // Uniform j in 0..=i by multiply-shift (Lemire); the bias is below 2^-64 * n.
        let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}
