#!/usr/bin/env python3
"""Parity fixtures for temper, made by Hugging Face transformers + PEFT.

Writes, for each case, ``tests/fixtures/parity/<case>/``:

  model/config.json, model/model.safetensors
      a tiny random base model (float32), saved by ``save_pretrained``.
  adapter/adapter_config.json, adapter/adapter_model.safetensors
      a PEFT LoRA adapter with random, non-zero A and B (the adapter temper loads).
  expected.safetensors
      input_ids.<i>   int64 (len_i,)          sequence i (i = 0, 1, 2)
      labels.<i>      int64 (len_i,)          its labels (-100 = no loss), unshifted
      logits.<i>      f32   (len_i, vocab)    logits at the real (unpadded) positions
      loss            f32   (1,)              HF loss of the padded batch of all three
      per_sequence_loss f32 (3,)              HF loss of each sequence run alone
      n_loss_tokens   int64 (3,)              counted (shifted) tokens per sequence
      grad.<key>      f32                     d loss / d LoRA tensor, batch loss
      after_step.<key> f32                    the LoRA tensor after one AdamW step
    <key> is the tensor's key exactly as in adapter_model.safetensors, e.g.
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``.
  case.json
      the hyper-parameters and shapes (and the seed).

How the numbers are made (so temper can reproduce them):

* Everything is float32, attn_implementation="eager", one CPU thread.
* Families: Llama (GQA, llama3 rope scaling), Qwen2 (q/k/v bias, tied embeddings),
  Qwen3 (per-head q/k RMSNorms, an explicit head_dim that is not hidden/heads, tied
  embeddings), Mistral (sliding_window shorter than the sequences, explicit head_dim),
  Phi-3 (fused qkv_proj / gate_up_proj, partial rotary factor 0.5, LongRoPE with an
  original context of 16: the batch and the 20-token sequence use the long factors, the 7-
  and 13-token sequences run alone use the short ones), Gemma (GeGLU, (1 + w) norms,
  sqrt(hidden) embedding scale, head_dim beside hidden), Gemma 2 (sandwich norms, attention
  and final soft caps small enough to bend the scores and logits, query_pre_attn_scalar 6,
  sliding and full layers with a window of 4), Gemma 3 (q/k norms, local RoPE base 1e4 on
  sliding layers, global base 1e6 with linear scaling, window 4).
  All but the first three cases use a smaller shape (``SMALL``) to keep their files small.
* Base weights: every parameter drawn from a seeded torch.Generator in the order of
  ``named_parameters()``: linear weights and embeddings N(0, 0.02^2), except q_proj
  and k_proj weights N(0, 0.15^2) so the attention scores are O(1) and position
  (RoPE) errors show in the logits; biases (qwen2 q/k/v) N(0, 0.1^2); RMSNorm
  weights (qwen3's q_norm / k_norm included) 1 + N(0, 0.1^2).
* LoRA: r=4, alpha=8, dropout 0; every lora_A ~ N(0, 0.05^2), every lora_B ~
  N(0, 0.02^2) (PEFT would start B at zero; we want non-zero everything).
  Scale = alpha/r (rsLoRA: alpha/sqrt(r)).
* The batch: three sequences (lengths 7, 13, 20), right-padded with id 0 to 20,
  attention_mask 0 on padding, labels -100 on padding and on a few chosen positions.
  loss = ``model(input_ids, attention_mask=..., labels=...).loss``, i.e. HF's mean
  over all counted shifted tokens of the batch (logits[:, :-1] vs labels[:, 1:]).
* per_sequence_loss: each sequence run alone (no padding), before any update.
  loss == sum(per_sequence_loss * n_loss_tokens) / sum(n_loss_tokens).
* One step of torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
  weight_decay=0.01) over the LoRA tensors, from the batch loss's gradients.
  (After one step, AdamW's update is ~lr*sign(grad): for elements whose |grad| is
  near eps the step is sensitive; case.json records min |grad|.)

Usage:  python scripts/make_parity_fixtures.py [--out tests/fixtures/parity]
Needs torch, transformers, peft, safetensors. Deterministic: running it twice gives
the same tensors byte for byte (same library versions, same machine).
"""

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import peft  # noqa: E402
import safetensors.torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import (  # noqa: E402
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "phi3": (Phi3Config, Phi3ForCausalLM),
    "gemma": (GemmaConfig, GemmaForCausalLM),
    "gemma2": (Gemma2Config, Gemma2ForCausalLM),
    "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM),
}

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# PEFT's names for Phi-3's linear layers (q/k/v and gate/up are fused).
PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
SEQ_LENS = [7, 13, 20]
VOCAB = 263
LR, BETAS, EPS, WD = 1e-2, (0.9, 0.999), 1e-8, 0.01
R, ALPHA = 4, 8

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# The newer families' shape: head_dim 8 with hidden 16 and 4 heads (q is 32 wide, not 16),
# so an implementation that derives head_dim from hidden / heads fails.
SMALL = dict(
    COMMON,
    vocab_size=67,
    hidden_size=16,
    intermediate_size=24,
    head_dim=8,
)

# original_max_position_embeddings is 32 (not 16) so that the three llama3 branches
# are all hit for head_dim 16, theta 1e4: wavelength 2*pi (< 32/4 = 8: kept),
# 19.9 (between 8 and 32: smoothed), >= 62.8 (> 32: divided by factor).
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}

CASES = {
    "llama_gqa": dict(
        seed=1001,
        arch="llama",
        config=dict(rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                    rope_scaling=LLAMA3_ROPE),
        targets=ALL_TARGETS,
        use_rslora=False,
    ),
    "qwen2": dict(
        seed=2002,
        arch="qwen2",
        config=dict(rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                    use_sliding_window=False),
        targets=ALL_TARGETS,
        use_rslora=False,
    ),
    "llama_rslora": dict(
        seed=3003,
        arch="llama",
        config=dict(rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False),
        targets=["q_proj", "v_proj", "down_proj"],
        use_rslora=True,
    ),
    "qwen3": dict(
        seed=4004,
        arch="qwen3",
        common=SMALL,
        config=dict(rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                    use_sliding_window=False),
        targets=ALL_TARGETS,
        use_rslora=False,
    ),
    # sliding_window 4: every sequence (7, 13, 20 tokens) is longer than the window.
    "mistral_sliding": dict(
        seed=5007,
        arch="mistral",
        common=SMALL,
        config=dict(rms_norm_eps=1e-5, rope_theta=1000000.0, tie_word_embeddings=False,
                    sliding_window=4),
        targets=ALL_TARGETS,
        use_rslora=False,
    ),
}

# Phi-3: hidden 32 over 4 heads gives head_dim 8, half of it rotated (4 dims, 2 factors).
PHI3_SHAPE = dict(SMALL, hidden_size=32)
del PHI3_SHAPE["head_dim"]
CASES["phi3_longrope"] = dict(
    seed=6007,
    arch="phi3",
    common=PHI3_SHAPE,
    config=dict(rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=64,
                original_max_position_embeddings=16, partial_rotary_factor=0.5,
                rope_scaling={"type": "longrope", "rope_theta": 10000.0,
                              "short_factor": [1.0, 1.7], "long_factor": [2.5, 6.0]}),
    targets=PHI3_TARGETS,
    use_rslora=False,
    alone_differs=True,
)
CASES["gemma"] = dict(
    seed=7007,
    arch="gemma",
    common=SMALL,
    config=dict(rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True),
    targets=ALL_TARGETS,
    use_rslora=False,
)
# Soft caps small enough to bend: scores here are O(1), logits O(0.1).
CASES["gemma2_softcap"] = dict(
    seed=8008,
    arch="gemma2",
    common=SMALL,
    config=dict(rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                query_pre_attn_scalar=6, sliding_window=4,
                attn_logit_softcapping=1.0, final_logit_softcapping=0.1),
    targets=ALL_TARGETS,
    use_rslora=False,
)
CASES["gemma3"] = dict(
    seed=9009,
    arch="gemma3",
    common=SMALL,
    config=dict(rms_norm_eps=1e-6, tie_word_embeddings=True, query_pre_attn_scalar=6,
                sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "linear", "factor": 2.0,
                                       "rope_theta": 1000000.0},
                }),
    targets=ALL_TARGETS,
    use_rslora=False,
)

# Positions (in the unshifted labels) set to -100, per sequence, besides padding.
MASKED = {0: [], 1: [0, 1, 2], 2: [5, 11]}


def build_model(case):
    cfg_kwargs = dict(case.get("common", COMMON), **case["config"])
    config_cls, cls = ARCHS[case["arch"]]
    config = config_cls(**cfg_kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(case["seed"])
    model = cls(config).to(torch.float32)
    model.config._attn_implementation = "eager"
    g = torch.Generator().manual_seed(case["seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith(".bias"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                v = 0.15 * torch.randn(p.shape, generator=g)
            else:
                v = 0.02 * torch.randn(p.shape, generator=g)
            p.copy_(v)
    model.eval()
    return model


def make_inputs(seed, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed + 7)
    ids, labels = [], []
    for i, n in enumerate(SEQ_LENS):
        x = torch.randint(3, vocab, (n,), generator=g, dtype=torch.int64)
        y = x.clone()
        for j in MASKED[i]:
            y[j] = -100
        ids.append(x)
        labels.append(y)
    return ids, labels


def pad_batch(ids, labels):
    T = max(SEQ_LENS)
    B = len(ids)
    input_ids = torch.zeros(B, T, dtype=torch.int64)
    lab = torch.full((B, T), -100, dtype=torch.int64)
    mask = torch.zeros(B, T, dtype=torch.int64)
    for i, (x, y) in enumerate(zip(ids, labels)):
        n = x.numel()
        input_ids[i, :n] = x
        lab[i, :n] = y
        mask[i, :n] = 1
    return input_ids, mask, lab


def peft_key(param_name):
    # named_parameters: ...q_proj.lora_A.default.weight ; file: ...q_proj.lora_A.weight
    return param_name.replace(".default.", ".")


def make_case(name, case, out_root):
    out = out_root / name
    # Replace only what this script writes; anything else in the folder stays.
    for sub in ("model", "adapter"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)

    model = build_model(case)
    model.save_pretrained(out / "model", safe_serialization=True)

    lcfg = LoraConfig(
        r=R,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=case["targets"],
        task_type="CAUSAL_LM",
        use_rslora=case["use_rslora"],
        bias="none",
    )
    pm = get_peft_model(model, lcfg)
    pm.eval()  # dropout is 0 anyway; eval keeps everything deterministic
    g = torch.Generator().manual_seed(case["seed"] + 1)
    lora_params = []
    with torch.no_grad():
        for pname, p in pm.named_parameters():
            if "lora_" not in pname:
                assert not p.requires_grad, pname
                continue
            assert p.requires_grad, pname
            std = 0.05 if ".lora_A." in pname else 0.02
            p.copy_(std * torch.randn(p.shape, generator=g))
            lora_params.append((peft_key(pname), p))
    pm.save_pretrained(out / "adapter")
    # Fix the base model path recorded in the adapter config to the sibling folder.
    acfg_path = out / "adapter" / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text())
    acfg["base_model_name_or_path"] = "../model"
    # PEFT stores target_modules from a set: its order changes from run to run.
    acfg["target_modules"] = sorted(acfg["target_modules"])
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")

    saved = safetensors.torch.load_file(out / "adapter" / "adapter_model.safetensors")
    assert set(saved) == {k for k, _ in lora_params}, (sorted(saved), [k for k, _ in lora_params])
    for k, p in lora_params:
        assert torch.equal(saved[k], p.detach()), k

    ids, labels = make_inputs(case["seed"], model.config.vocab_size)
    expected = {}
    for i, (x, y) in enumerate(zip(ids, labels)):
        expected[f"input_ids.{i}"] = x.clone()
        expected[f"labels.{i}"] = y.clone()

    # Each sequence alone, before any update.
    per_seq, n_tok = [], []
    with torch.no_grad():
        for x, y in zip(ids, labels):
            o = pm(input_ids=x[None], labels=y[None])
            per_seq.append(o.loss.float().item())
            n_tok.append(int((y[1:] != -100).sum()))
    expected["per_sequence_loss"] = torch.tensor(per_seq, dtype=torch.float32)
    expected["n_loss_tokens"] = torch.tensor(n_tok, dtype=torch.int64)

    # The padded batch: forward, backward, one AdamW step.
    input_ids, mask, lab = pad_batch(ids, labels)
    out_b = pm(input_ids=input_ids, attention_mask=mask, labels=lab)
    loss = out_b.loss
    for i, n in enumerate(SEQ_LENS):
        expected[f"logits.{i}"] = out_b.logits[i, :n].detach().float().clone().contiguous()
    expected["loss"] = loss.detach().float().reshape(1).clone()
    loss.backward()
    min_abs_grad = math.inf
    for k, p in lora_params:
        expected[f"grad.{k}"] = p.grad.detach().clone().contiguous()
        min_abs_grad = min(min_abs_grad, p.grad.abs().min().item())
    opt = torch.optim.AdamW([p for _, p in lora_params], lr=LR, betas=BETAS, eps=EPS,
                            weight_decay=WD, foreach=False)
    opt.step()
    for k, p in lora_params:
        expected[f"after_step.{k}"] = p.detach().clone().contiguous()

    # Sanity: the batch loss is the token-weighted mean of the per-sequence losses (not with
    # LongRoPE, whose factors depend on the longest position of each forward).
    recon = sum(l * n for l, n in zip(per_seq, n_tok)) / sum(n_tok)
    if not case.get("alone_differs"):
        assert abs(recon - loss.item()) < 1e-5 * max(1.0, abs(recon)), (recon, loss.item())

    safetensors.torch.save_file(expected, out / "expected.safetensors",
                                metadata={"generator": "scripts/make_parity_fixtures.py"})
    (out / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub
    check_reload(out, expected, case.get("alone_differs", False))

    scale = ALPHA / math.sqrt(R) if case["use_rslora"] else ALPHA / R
    info = {
        "case": name,
        "seed": case["seed"],
        "architecture": type(model).__name__,
        "dtype": "float32",
        "attn_implementation": "eager",
        "lora": {
            "r": R,
            "lora_alpha": ALPHA,
            "lora_dropout": 0.0,
            "use_rslora": case["use_rslora"],
            "scale": scale,
            "target_modules": case["targets"],
            "init": "lora_A ~ N(0, 0.05^2), lora_B ~ N(0, 0.02^2)",
        },
        "optimizer": {
            "name": "AdamW",
            "lr": LR,
            "betas": list(BETAS),
            "eps": EPS,
            "weight_decay": WD,
            "steps": 1,
        },
        "seq_lens": SEQ_LENS,
        "pad_token_id": 0,
        "padded_len": max(SEQ_LENS),
        "masked_label_positions": {str(k): v for k, v in MASKED.items()},
        "n_loss_tokens": n_tok,
        "loss": loss.item(),
        "per_sequence_loss": per_seq,
        # True when a sequence run alone differs from its rows of the batch (LongRoPE).
        "alone_differs": bool(case.get("alone_differs", False)),
        "min_abs_grad": min_abs_grad,
        "lora_keys": [k for k, _ in lora_params],
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }
    (out / "case.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def check_reload(out, expected, batched=False):
    """Load the saved folders back the way a user would and re-derive the logits (from the
    padded batch when a sequence alone runs differently, as with LongRoPE)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32,
                                             attn_implementation="eager")
    pm = PeftModel.from_pretrained(m, out / "adapter")
    pm.eval()
    with torch.no_grad():
        ids = [expected[f"input_ids.{i}"] for i in range(len(SEQ_LENS))]
        input_ids, mask, _ = pad_batch(ids, ids)
        padded = pm(input_ids=input_ids, attention_mask=mask).logits
        for i in range(len(SEQ_LENS)):
            if batched:
                lg = padded[i, :SEQ_LENS[i]]
            else:
                lg = pm(input_ids=expected[f"input_ids.{i}"][None]).logits[0]
            diff = (lg - expected[f"logits.{i}"]).abs().max().item()
            assert diff < 1e-5, (out, i, diff)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=Path, default=root / "tests" / "fixtures" / "parity")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, case in CASES.items():
        if args.only and name not in args.only:
            continue
        info = make_case(name, case, args.out)
        size = sum(f.stat().st_size for f in (args.out / name).rglob("*") if f.is_file())
        print(f"{name}: loss {info['loss']:.6f} per-seq {[round(x, 6) for x in info['per_sequence_loss']]}"
              f" min|grad| {info['min_abs_grad']:.3e} size {size} B")


if __name__ == "__main__":
    main()
