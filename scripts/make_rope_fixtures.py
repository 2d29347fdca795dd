"""inv_freq and attention factors of transformers' RoPE scalings (yarn, dynamic), for
crates/temper-core/tests/cpu_ops.rs. Needs torch and transformers (5.x):

    python3 scripts/make_rope_fixtures.py > crates/temper-core/tests/fixtures/rope_scaling.json
"""
import json

import transformers
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

# (name, rope parameters, seq_len for dynamic scaling); head_dim 64, max_position_embeddings 4096.
CASES = [
    ("yarn", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}, None),
    ("yarn_beta", {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16, "beta_slow": 2,
                   "rope_theta": 500000.0}, None),
    ("yarn_mscale", {"rope_type": "yarn", "factor": 4.0, "mscale": 0.707, "mscale_all_dim": 1.0,
                     "rope_theta": 10000.0}, None),
    ("dynamic", {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}, 16384),
]

out = {"transformers": transformers.__version__, "head_dim": 64, "max_position_embeddings": 4096,
       "cases": {}}
for name, params, seq_len in CASES:
    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=4096,
                      rope_parameters=params)
    fn = ROPE_INIT_FUNCTIONS[params["rope_type"]]
    inv, factor = fn(cfg, "cpu", seq_len=seq_len) if seq_len else fn(cfg, "cpu")
    out["cases"][name] = {"params": params, "seq_len": seq_len, "inv_freq": inv.tolist(),
                          "attention_factor": float(factor)}
print(json.dumps(out, indent=1))
