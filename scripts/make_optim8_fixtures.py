#!/usr/bin/env python3
"""Fixtures for temper's 8-bit AdamW, made by bitsandbytes itself (0.50.x) on the CPU.

Writes crates/temper-core/tests/fixtures/bnb_adamw8bit/:
  steps.safetensors + cases.json   for each case: the starting parameter, the gradient of
      every step, and after every step the parameter and both 8-bit states as bitsandbytes
      keeps them (state1/state2 codes, absmax1/absmax2 per block of 256), plus the two maps
      (qmap1 = create_dynamic_map(signed=True), qmap2 = signed=False).

Cases run `bnb.optim.AdamW8bit` (what transformers' `adamw_8bit` / `adamw_bnb_8bit` builds),
or, for a tensor below its `min_8bit_size` of 4096 that the optimizer would keep in 32 bits,
`F.optimizer_update_8bit_blockwise("adam", ...)` directly: the same op the optimizer calls.
On the CPU it runs `backends/cpu/ops.py::_optimizer_update_8bit_blockwise_cpu`, which
dequantises both states, updates them with torch ops in f32 and requantises them with the
PyTorch reference ops of `backends/default/ops.py` (this wheel has no CPU library).

Usage (bitsandbytes 0.50 on PYTHONPATH, e.g. a copy of shared/py-site in .py-site):
  PYTHONPATH=.py-site python3 scripts/make_optim8_fixtures.py           # write
  PYTHONPATH=.py-site python3 scripts/make_optim8_fixtures.py --check   # rerun, compare
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/temper-core/tests/fixtures/bnb_adamw8bit"

# name, numel, steps, lr, (beta1, beta2), eps, weight_decay, how
CASES = [
    # 17 full blocks and a partial one of 148: the partial block is scaled by division.
    ("partial_block", 4500, 4, 1e-3, (0.9, 0.999), 1e-8, 0.01, "optimizer"),
    # 16 full blocks, no weight decay, other betas; block 3's gradients are all zero, so its
    # states stay zero (absmax 0).
    ("whole_blocks_zero_block", 4096, 4, 3e-3, (0.8, 0.99), 1e-6, 0.0, "optimizer"),
    # Below min_8bit_size: the op itself, one full block and a partial one of 44.
    ("small_op", 300, 3, 2e-2, (0.9, 0.999), 1e-8, 0.1, "op"),
]


def grads(name, n, steps):
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    out = []
    for k in range(steps):
        # Scales that vary across blocks and steps, so absmax moves both ways.
        scale = torch.exp(torch.randn(n // 64 + 1, generator=g)).repeat_interleave(64)[:n]
        x = torch.randn(n, generator=g) * scale * (0.01 * (k + 1))
        if name == "whole_blocks_zero_block":
            x[3 * 256 : 4 * 256] = 0.0
        out.append(x.float())
    return out


def run_case(case):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    name, n, steps, lr, betas, eps, wd, how = case
    g = torch.Generator().manual_seed(1000 + n)
    p0 = torch.randn(n, generator=g).float()
    gs = grads(name, n, steps)
    out = {f"{name}.param0": p0.clone()}
    for k, x in enumerate(gs, 1):
        out[f"{name}.grad{k}"] = x.clone()
    if how == "optimizer":
        p = torch.nn.Parameter(p0.clone())
        opt = bnb.optim.AdamW8bit([p], lr=lr, betas=betas, eps=eps, weight_decay=wd)
        for k, x in enumerate(gs, 1):
            p.grad = x.clone()
            opt.step()
            st = opt.state[p]
            assert st["state1"].dtype == torch.uint8, "the optimizer kept 32-bit states"
            out[f"{name}.param{k}"] = p.detach().clone()
            for s in ("state1", "state2", "absmax1", "absmax2"):
                out[f"{name}.{s}_{k}"] = st[s].clone()
            qmap1, qmap2 = st["qmap1"], st["qmap2"]
    else:
        qmap1, qmap2 = F.create_dynamic_map(signed=True), F.create_dynamic_map(signed=False)
        p = p0.clone()
        blocks = -(-n // 256)
        s1, s2 = torch.zeros(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8)
        a1, a2 = torch.zeros(blocks), torch.zeros(blocks)
        for k, x in enumerate(gs, 1):
            F.optimizer_update_8bit_blockwise(
                "adam", x, p, s1, s2, betas[0], betas[1], 0.0, 0.0, eps, k, lr,
                qmap1, qmap2, a1, a2, weight_decay=wd, gnorm_scale=1.0)
            out[f"{name}.param{k}"] = p.clone()
            for s, t in (("state1", s1), ("state2", s2), ("absmax1", a1), ("absmax2", a2)):
                out[f"{name}.{s}_{k}"] = t.clone()
    man = {"name": name, "numel": n, "steps": steps, "lr": lr, "beta1": betas[0],
           "beta2": betas[1], "eps": eps, "weight_decay": wd, "via": how}
    return out, man, qmap1.clone(), qmap2.clone()


def run_all():
    tensors, cases = {}, []
    for case in CASES:
        t, man, q1, q2 = run_case(case)
        tensors.update(t)
        cases.append(man)
        tensors["qmap1"], tensors["qmap2"] = q1, q2
    return {k: v.contiguous() for k, v in tensors.items()}, cases


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="rerun and compare with the committed files")
    a = ap.parse_args()
    import bitsandbytes as bnb

    if not bnb.__version__.startswith("0.50"):
        print(f"warning: bitsandbytes {bnb.__version__}; the fixtures are from 0.50", file=sys.stderr)
    tensors, cases = run_all()
    if a.check:
        ref = load_file(str(FIXTURES / "steps.safetensors"))
        bad = [k for k in ref if not torch.equal(ref[k], tensors[k])]
        print("identical" if not bad else f"differ: {bad}")
        sys.exit(1 if bad else 0)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(FIXTURES / "steps.safetensors"), metadata={"format": "pt"})
    (FIXTURES / "cases.json").write_text(json.dumps({"bitsandbytes": bnb.__version__,
                                                     "torch": torch.__version__,
                                                     "cases": cases}, indent=1) + "\n")
    print(f"wrote {FIXTURES / 'steps.safetensors'} ({(FIXTURES / 'steps.safetensors').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
