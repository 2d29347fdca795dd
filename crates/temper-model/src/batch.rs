//! What one forward reads besides the weights: a packed batch of token sequences and the
//! step's settings (training or not, the dropout seed).

use crate::lora::Target;

/// A flat, varlen batch of N tokens: sequences laid end to end, no padding.
#[derive(Clone, Copy, Debug)]
pub struct TokenBatch<'a> {
    pub ids: &'a [u32],       // (N)
    pub positions: &'a [u32], // (N), restarting at 0 for each sequence
    /// (S+1) offsets of the sequences in the batch.
    pub cu_seqlens: &'a [u32],
    /// (N) the token each position must predict, -100 where no loss is taken.
    pub targets: &'a [i32],
}

impl TokenBatch<'_> {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// An owned batch of equal-length rows trained as a causal LM on their own tokens
/// (`labels=input_ids`): what benchmarks and memory checks feed the model.
pub struct LmRows {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub cu_seqlens: Vec<u32>,
    pub targets: Vec<i32>,
}

impl LmRows {
    /// `ids` holds rows of `seq` tokens laid end to end; each row predicts its own next
    /// token and its last token predicts nothing.
    pub fn new(ids: Vec<u32>, seq: usize) -> Self {
        let n = ids.len();
        let seq = seq.max(1);
        let targets = (0..n)
            .map(|i| {
                if (i + 1) % seq == 0 || i + 1 == n {
                    -100
                } else {
                    ids[i + 1] as i32
                }
            })
            .collect();
        LmRows {
            positions: (0..n).map(|i| (i % seq) as u32).collect(),
            cu_seqlens: (0..n.div_ceil(seq))
                .map(|r| (r * seq) as u32)
                .chain([n as u32])
                .collect(),
            targets,
            ids,
        }
    }

    pub fn batch(&self) -> TokenBatch<'_> {
        TokenBatch {
            ids: &self.ids,
            positions: &self.positions,
            cu_seqlens: &self.cu_seqlens,
            targets: &self.targets,
        }
    }

    /// Tokens that carry a loss.
    pub fn loss_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t >= 0).count()
    }
}

/// Per-step settings shared by forward and backward.
#[derive(Clone, Copy, Debug)]
pub struct StepCtx {
    /// Dropout is active only when training.
    pub training: bool,
    /// Seeds this step's dropout masks; recompute uses the same masks.
    pub seed: u64,
}

impl StepCtx {
    pub fn eval() -> Self {
        StepCtx {
            training: false,
            seed: 0,
        }
    }

    /// A distinct dropout seed for each (step, layer, target).
    pub fn dropout_seed(&self, layer: usize, t: Target) -> u64 {
        let mut z = self.seed
            ^ ((layer as u64) << 8 | t.index() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
