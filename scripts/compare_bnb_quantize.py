#!/usr/bin/env python3
"""`temper quantize` against transformers + bitsandbytes `save_pretrained`, tensor by tensor.

Makes a random model with `temper init-model --shape SHAPE`, quantises it with
`temper quantize` and with transformers' `from_pretrained(quantization_config=
BitsAndBytesConfig(load_in_4bit=True, ...), device_map=DEVICE)` + `save_pretrained`, and
compares every tensor's bytes and config.json. Differences of the kinds bitsandbytes' CUDA
kernels are known to have from its CPU ops (see scripts/make_bnb_fixtures.py) are reported
and counted but fail only with --strict; anything else exits 1.

  cargo build --release -p temper-cli
  PYTHONPATH=.py-site python3 scripts/compare_bnb_quantize.py --temper target/release/temper \\
      --device cuda [--quant-type nf4|fp4] [--double-quant] [--compute-dtype bfloat16]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_bnb_fixtures import compare_4bit_folders, load_folder  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--temper", required=True, help="the temper binary")
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--shape", default="tiny")
    ap.add_argument("--quant-type", default="nf4", choices=["nf4", "fp4"])
    ap.add_argument("--double-quant", action="store_true")
    ap.add_argument("--compute-dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--strict", action="store_true", help="fail on known CPU/CUDA differences too")
    ap.add_argument("--keep", type=Path, help="keep the three folders here")
    a = ap.parse_args()

    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = a.keep or Path(tmp)
        src, mine, theirs = root / "src", root / "temper", root / "bnb"
        run = lambda *args: subprocess.run([a.temper, *map(str, args)], check=True)  # noqa: E731
        run("init-model", "--shape", a.shape, "--out", src)
        flags = ["--quant-type", a.quant_type, "--compute-dtype", a.compute_dtype, "--force"]
        run("quantize", src, "--out", mine, *flags, *(["--double-quant"] if a.double_quant else []))
        cfg = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=a.quant_type,
            bnb_4bit_use_double_quant=a.double_quant,
            bnb_4bit_compute_dtype=DTYPES[a.compute_dtype],
        )
        model = AutoModelForCausalLM.from_pretrained(src, quantization_config=cfg, device_map=a.device)
        model.save_pretrained(theirs)

        failures, known, lines = compare_4bit_folders(src, mine, theirs, a.quant_type, a.strict)
        print("\n".join(lines))
        ce = json.loads((mine / "config.json").read_text())
        cb = json.loads((theirs / "config.json").read_text())
        other = sorted(k for k in set(ce) | set(cb) if ce.get(k) != cb.get(k) and k != "quantization_config")
        if other:
            print("other config.json keys differ (transformers rewrites the source config):", other)
        # transformers loads temper's folder as it is, with every quantised linear in 4 bits,
        # and computes from it what it computes from its own save.
        del model
        def linear4(m):
            return sum(type(x).__name__ == "Linear4bit" for x in m.modules())
        ours_m = AutoModelForCausalLM.from_pretrained(mine, device_map=a.device)
        theirs_m = AutoModelForCausalLM.from_pretrained(theirs, device_map=a.device)
        ids = (torch.arange(1, 33) % ours_m.config.vocab_size).unsqueeze(0).to(ours_m.device)
        with torch.no_grad():
            lo, lt = ours_m(ids).logits.float(), theirs_m(ids).logits.float()
        diff = (lo - lt).abs().max().item()
        n4, want4 = linear4(ours_m), linear4(theirs_m)
        print(f"transformers loads temper's folder: {n4} Linear4bit modules (its own save: {want4}); "
              f"logits max |difference| from its own save {diff:.3g} (max |logit| {lt.abs().max().item():.3g})")
        if n4 != want4 or n4 == 0 or not torch.isfinite(lo).all():
            failures += 1
        elif diff != 0 and not known:
            print("the logits differ although every tensor is the same")
            failures += 1
        print(f"{len(load_folder(theirs))} tensors: {'FAILED' if failures else 'PASSED'} "
              f"({failures} unexplained, {known} with known CPU/CUDA differences)")
        sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
