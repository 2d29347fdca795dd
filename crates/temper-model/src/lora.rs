//! LoRA adapters as PEFT defines them: `y = W x + s * B(A dropout(x))`, s = alpha / r
//! (rsLoRA: alpha / sqrt(r)); A (r, in) ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform,
//! a = sqrt(5)), B (out, r) = 0.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use temper_core::Backend;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// The linear layers of a decoder block that can carry an adapter: the seven of a
/// Llama-style block, and Phi-3's two fused ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    /// q, k and v in one projection (Phi-3's `qkv_proj`): output rows q, then k, then v.
    Qkv,
    /// gate and up in one projection (Phi-3's `gate_up_proj`): output rows gate, then up.
    GateUp,
}

impl Target {
    /// How many kinds there are (the size of per-target tables).
    pub const COUNT: usize = 9;

    /// Every linear layer of a Llama-style block (Llama, Mistral, Qwen, Gemma).
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// Every linear layer of a block with fused projections (Phi-3).
    pub const FUSED: [Target; 4] = [Target::Qkv, Target::O, Target::GateUp, Target::Down];

    const EVERY: [Target; 9] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
        Target::Qkv,
        Target::GateUp,
    ];

    /// The module name PEFT's `target_modules` uses.
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
            Target::Qkv => "qkv_proj",
            Target::GateUp => "gate_up_proj",
        }
    }

    /// Path inside a decoder layer.
    pub fn path(self) -> &'static str {
        match self {
            Target::Q => "self_attn.q_proj",
            Target::K => "self_attn.k_proj",
            Target::V => "self_attn.v_proj",
            Target::O => "self_attn.o_proj",
            Target::Gate => "mlp.gate_proj",
            Target::Up => "mlp.up_proj",
            Target::Down => "mlp.down_proj",
            Target::Qkv => "self_attn.qkv_proj",
            Target::GateUp => "mlp.gate_up_proj",
        }
    }

    pub fn parse(name: &str) -> Option<Target> {
        Target::EVERY.into_iter().find(|t| t.name() == name)
    }

    /// (in_features, out_features) of this linear layer.
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        match self {
            Target::Q => (cfg.hidden, cfg.q_dim()),
            Target::K | Target::V => (cfg.hidden, cfg.kv_dim()),
            Target::O => (cfg.q_dim(), cfg.hidden),
            Target::Gate | Target::Up => (cfg.hidden, cfg.intermediate),
            Target::Down => (cfg.intermediate, cfg.hidden),
            Target::Qkv => (cfg.hidden, cfg.q_dim() + 2 * cfg.kv_dim()),
            Target::GateUp => (cfg.hidden, 2 * cfg.intermediate),
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The adapter targets `targets` names, for this model: the Llama-style list of all seven
/// (what `all-linear` and the default give) means every linear layer the model has; any other
/// list must name layers the model has, by PEFT's names for its family.
pub fn resolve_targets(
    cfg: &ModelConfig,
    targets: &[Target],
) -> std::result::Result<Vec<Target>, String> {
    let linears = cfg.linears();
    let mut all = Target::ALL.to_vec();
    let mut given = targets.to_vec();
    given.sort();
    given.dedup();
    all.sort();
    if given == all {
        return Ok(linears.to_vec());
    }
    if let Some(t) = given.iter().find(|t| !linears.contains(t)) {
        let names: Vec<&str> = linears.iter().map(|t| t.name()).collect();
        let why = if cfg.fused_proj {
            " (Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj, as PEFT names them)"
        } else {
            ""
        };
        return Err(format!(
            "target module `{}` is not a linear layer of this {} model{why}; choose from {} or all-linear",
            t.name(),
            cfg.model_type,
            names.join(", ")
        ));
    }
    Ok(given)
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The adapter's hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub use_rslora: bool,
    pub targets: Vec<Target>,
}

impl LoraConfig {
    /// The factor `s` in `y = W x + s * B A x`.
    pub fn scale(&self) -> f32 {
        if self.use_rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }
}

/// One trainable tensor: its PEFT key, shape, value and gradient.
pub struct Param<B: Backend> {
    pub key: String,
    pub shape: [usize; 2],
    pub value: B::Buf,
    pub grad: B::Buf,
    /// `value` in the backend's compute dtype while one forward and backward runs (see
    /// [`LoraParams::make_compute_copies`]); None otherwise, and always on an f32 backend.
    pub compute: Option<B::Buf>,
}

impl<B: Backend> Param<B> {
    /// The value for GEMMs with activations: the compute-dtype copy when one is current.
    pub fn for_compute(&self) -> &B::Buf {
        self.compute.as_ref().unwrap_or(&self.value)
    }
}

/// All LoRA tensors of a model, in PEFT's key order (layer, then target, A before B).
pub struct LoraParams<B: Backend> {
    pub config: LoraConfig,
    pub params: Vec<Param<B>>,
    /// [layer][target] -> index of lora_A in `params` (lora_B is the next one).
    slots: Vec<[Option<usize>; Target::COUNT]>,
}

/// PEFT's key for a LoRA tensor of a causal LM.
pub fn peft_key(layer: usize, target: Target, which: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{which}.weight",
        target.path()
    )
}

impl<B: Backend> LoraParams<B> {
    /// Fresh adapters: A kaiming-uniform from `seed`, B zero, exactly PEFT's scheme.
    pub fn init(be: &B, cfg: &ModelConfig, lora: &LoraConfig, seed: u64) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Self::build(be, cfg, lora, |key, shape, is_a| {
            if is_a {
                let bound = 1.0 / (shape[1] as f32).sqrt();
                Ok((0..shape[0] * shape[1])
                    .map(|_| rng.random_range(-bound..bound))
                    .collect())
            } else {
                let _ = key;
                Ok(vec![0.0; shape[0] * shape[1]])
            }
        })
    }

    /// Builds the parameter list, asking `fill(key, shape, is_a)` for each tensor's values.
    pub fn build(
        be: &B,
        cfg: &ModelConfig,
        lora: &LoraConfig,
        mut fill: impl FnMut(&str, [usize; 2], bool) -> Result<Vec<f32>>,
    ) -> Result<Self> {
        if lora.r == 0 {
            return Err(ModelError::Adapter("LoRA rank r must be at least 1".into()));
        }
        if lora.targets.is_empty() {
            let names: Vec<&str> = cfg.linears().iter().map(|t| t.name()).collect();
            return Err(ModelError::Adapter(format!(
                "no target modules: name at least one of {}",
                names.join(", ")
            )));
        }
        let mut lora = lora.clone();
        lora.targets = resolve_targets(cfg, &lora.targets).map_err(ModelError::Adapter)?;
        let lora = &lora;
        let mut params = Vec::new();
        let mut slots = vec![[None; Target::COUNT]; cfg.layers];
        for (layer, slot) in slots.iter_mut().enumerate() {
            for t in cfg.linears().iter().copied() {
                if !lora.targets.contains(&t) {
                    continue;
                }
                let (d_in, d_out) = t.dims(cfg);
                slot[t.index()] = Some(params.len());
                for (which, shape) in [('A', [lora.r, d_in]), ('B', [d_out, lora.r])] {
                    let key = peft_key(layer, t, which);
                    let host = fill(&key, shape, which == 'A')?;
                    if host.len() != shape[0] * shape[1] {
                        return Err(ModelError::Adapter(format!(
                            "`{key}` has {} values, expected {:?}",
                            host.len(),
                            shape
                        )));
                    }
                    params.push(Param {
                        value: be.upload(&host)?,
                        grad: be.zeros(host.len())?,
                        compute: None,
                        key,
                        shape,
                    });
                }
            }
        }
        Ok(LoraParams {
            config: lora.clone(),
            params,
            slots,
        })
    }

    /// (A, B) of a layer's target, if it has an adapter.
    pub fn get(&self, layer: usize, t: Target) -> Option<(&Param<B>, &Param<B>)> {
        let i = self.slots.get(layer)?[t.index()]?;
        Some((&self.params[i], &self.params[i + 1]))
    }

    /// The first index in `params` of the tensors of layers `layer` and above, when those
    /// tensors are exactly the tail of `params` (true for adapters made or loaded here, which
    /// go layer by layer); None otherwise.
    pub fn tail_from_layer(&self, layer: usize) -> Option<usize> {
        let first = |slot: &[Option<usize>; Target::COUNT]| slot.iter().flatten().min().copied();
        let mut prev_end = 0;
        for slot in &self.slots {
            if let Some(f) = first(slot) {
                if f < prev_end {
                    return None;
                }
                prev_end = slot.iter().flatten().max().map_or(f, |m| m + 2);
            }
        }
        self.slots
            .iter()
            .skip(layer)
            .filter_map(first)
            .min()
            .or(Some(self.params.len()))
    }

    /// Mutable (A, B) of a layer's target.
    pub fn get_mut(&mut self, layer: usize, t: Target) -> Option<(&mut Param<B>, &mut Param<B>)> {
        let i = self.slots.get(layer)?[t.index()]?;
        let (left, right) = self.params.split_at_mut(i + 1);
        Some((&mut left[i], &mut right[0]))
    }

    /// Copies every value into the compute dtype once, for a forward and backward that use
    /// them in many GEMMs with 16-bit activations (instead of converting at every GEMM).
    /// The copies are only valid until the values change: drop them with
    /// [`LoraParams::drop_compute_copies`] before the optimizer runs.
    pub fn make_compute_copies(&mut self, be: &B) -> Result<()> {
        let dt = be.compute_dtype();
        if dt == temper_core::DType::F32 {
            return Ok(());
        }
        let mut copies = self
            .params
            .iter()
            .map(|p| be.uninit_as(be.len(&p.value), dt))
            .collect::<temper_core::Result<Vec<_>>>()?;
        {
            let mut dsts: Vec<&mut B::Buf> = copies.iter_mut().collect();
            let srcs: Vec<&B::Buf> = self.params.iter().map(|p| &p.value).collect();
            be.copy_all(&mut dsts, &srcs)?;
        }
        for (p, copy) in self.params.iter_mut().zip(copies) {
            p.compute = Some(copy);
        }
        Ok(())
    }

    /// Frees the copies [`LoraParams::make_compute_copies`] made.
    pub fn drop_compute_copies(&mut self) {
        for p in &mut self.params {
            p.compute = None;
        }
    }

    /// Sets every gradient to zero (one launch on a GPU).
    pub fn zero_grads(&mut self, be: &B) -> Result<()> {
        let mut grads: Vec<&mut B::Buf> = self.params.iter_mut().map(|p| &mut p.grad).collect();
        be.fill_all(&mut grads, 0.0)?;
        Ok(())
    }

    /// Number of trainable values.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.shape[0] * p.shape[1]).sum()
    }
}
