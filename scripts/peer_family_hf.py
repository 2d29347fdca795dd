"""transformers + PEFT + bitsandbytes on a random-weight folder of any family temper benchmarks.

anchor_hf.py times the seed's stack with LoRA on the seven Llama projection names; Phi-3 fuses
them (`qkv_proj`, `gate_up_proj`), so PEFT would refuse those names there. This runs the same
measurement (anchor_hf.py's `run_case`: NF4 + double quantisation, bf16 compute, gradient
checkpointing, paged AdamW, r=16, alpha=32) with the family's own module names, read from the
folder's config.json.

usage: python3 peer_family_hf.py --anchor PATH/anchor_hf.py --model-dir DIR
                                 [--cases nf4:1024:4,...] [--steps N]
Prints anchor_hf.py's JSON line per case.
"""
import argparse
import importlib.util
import json
import os

FUSED = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
SEPARATE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def targets_for(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        model_type = json.load(f).get("model_type", "")
    return FUSED if model_type.startswith("phi3") else SEPARATE


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchor", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--cases", default="nf4:1024:4")
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    spec = importlib.util.spec_from_file_location("anchor_hf", a.anchor)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    targets = targets_for(a.model_dir)
    for c in a.cases.split(","):
        quant, seq, batch = c.split(":")[:3]
        try:
            anchor.run_case(a.model_dir, int(seq), int(batch), quant, targets, 16, False, a.steps,
                            "paged_adamw_32bit")
        except Exception as e:  # one failed case must not hide the others
            print(json.dumps(dict(case=f"hf-peft-{quant}", seq=int(seq), batch=int(batch),
                                  error=repr(e)[:300])), flush=True)


if __name__ == "__main__":
    main()
