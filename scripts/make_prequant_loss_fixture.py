#!/usr/bin/env python3
"""Losses of the 4-bit and 8-bit folders that transformers + bitsandbytes saved, computed by
them.

Reads the folders made by scripts/make_bnb_fixtures.py
(crates/temper-quant/tests/fixtures/bnb/model/{nf4_dq,fp4}: a tiny random Llama, saved by
``save_pretrained`` after ``from_pretrained(load_in_4bit=True)``), loads each one back with
``AutoModelForCausalLM.from_pretrained`` as it is stored (no requantising), and writes
crates/temper-model/tests/fixtures/prequant/<folder>.json:

  rows              three fixed rows of token ids (lengths 17, 29, 40; seeded), int
  losses            each row's mean loss with labels = input ids (run alone, no padding),
                    everything in float32: the unquantised tensors (embedding, norms,
                    lm_head; stored in bf16) widened exactly to f32 after loading (transformers
                    5 keeps a pre-quantised folder's float tensors in their stored dtype even
                    with dtype=torch.float32) and every Linear4bit's compute_dtype set to f32
  logits_row0       row 0's logits (len0 x vocab, row-major, 9 significant digits), same run
  losses_saved_compute_dtype
                    the same losses with the Linear4bit layers left at the compute dtype
                    saved in config.json (bfloat16 for nf4_dq, float16 for fp4) and the other
                    tensors in bf16 as stored: what a plain from_pretrained gives
  versions, settings

How bitsandbytes 0.50 computes a Linear4bit on the CPU (no native CPU library in the wheel,
so its PyTorch reference ops, backends/default/ops.py): under torch.no_grad, matmul_4bit
calls the gemm_4bit op, which (for double quantisation) first rebuilds the f32 block scales
as dequantize_blockwise(codes, nested absmax, map, 256) + offset, then dequantises the
weight to the *input's* dtype (code[nibble] * absmax in f32, cast to A.dtype) and calls
F.linear. With compute_dtype float32 the weight is therefore exactly the f32 dequantised
value, the one temper's CPU backend uses. (With gradients enabled it would go through
MatMul4Bit instead, which dequantises to the stored dtype, bf16, first; this script runs
without gradients.)

The 8-bit folder (model/int8, saved after from_pretrained(load_in_8bit=True)) gives
crates/temper-model/tests/fixtures/prequant/int8.json with the same rows and:

  losses, logits_row0
                    bitsandbytes' own forward with the weights dequantised: the model in
                    float32 as above, put in training mode (no dropout in this Llama) so that
                    each Linear8bitLt runs bitsandbytes' CPU fine-tuning path MatMul8bitFp,
                    which dequantises the int8 weight to the input's dtype
                    (CB * (SCB * (1/127)), f32) and calls F.linear, under torch.no_grad.
                    temper dequantises as int8_vectorwise_dequant rounds it,
                    (CB * SCB) * (1/127): the two differ at most in the last bit of f32.
  losses_int8_matmul
                    the same model in eval mode: LLM.int8 inference (MatMul8bitLt), which
                    also quantises the activations row-wise to int8 after casting them to
                    float16, with outlier columns (|x| >= llm_int8_threshold 6.0) kept in
                    16 bits. temper never quantises activations, so this is only near.

Usage (bitsandbytes 0.50 on PYTHONPATH, e.g. a copy of /work/shared/py-site in .py-site):
  PYTHONPATH=.py-site python3 scripts/make_prequant_loss_fixture.py
Needs torch, transformers (5.x), bitsandbytes 0.50. CPU only, one thread, eager attention.
"""

import argparse
import json
import os
from pathlib import Path

# bitsandbytes wraps its dequantize helper in torch.compile; eager gives the same numbers.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "crates/temper-quant/tests/fixtures/bnb/model"
OUT = ROOT / "crates/temper-model/tests/fixtures/prequant"
FOLDERS = ["nf4_dq", "fp4"]
INT8_FOLDER = "int8"
ROW_LENS = [17, 29, 40]
SEED = 20240


def make_rows(vocab):
    g = torch.Generator().manual_seed(SEED)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in ROW_LENS]


def load(folder, compute_dtype, widen):
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, device_map="cpu", attn_implementation="eager"
    )
    m.eval()
    n4 = 0
    for mod in m.modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            n4 += 1
            if compute_dtype is not None:
                mod.compute_dtype = compute_dtype
    # transformers 5 loads the unquantised tensors of a pre-quantised bitsandbytes folder in
    # their stored dtype (bf16 here) whatever `dtype` says; widen them (exactly) to f32.
    for name, p in m.named_parameters():
        quantized = isinstance(p, (bnb.nn.Params4bit, bnb.nn.Int8Params))
        if not quantized and p.dtype != torch.float32 and widen:
            p.data = p.data.float()
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if widen and t.is_floating_point() and t.dtype != torch.float32:
            raise SystemExit(f"{folder}: {name} is {t.dtype}, not float32")
    return m, n4


@torch.no_grad()
def run(m, rows):
    losses, logits0 = [], None
    for i, ids in enumerate(rows):
        x = torch.tensor([ids])
        out = m(input_ids=x, labels=x)
        losses.append(out.loss.item())
        if i == 0:
            logits0 = out.logits[0].float()
    return losses, logits0


def versions():
    import bitsandbytes as bnb
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": bnb.__version__,
    }


def int8_fixture(out):
    import bitsandbytes as bnb

    d = MODELS / INT8_FOLDER
    cfg = json.loads((d / "config.json").read_text())
    if not cfg["quantization_config"].get("load_in_8bit"):
        raise SystemExit(f"{d}: not an 8-bit folder")
    rows = make_rows(cfg["vocab_size"])
    m, _ = load(d, None, True)
    n8 = sum(isinstance(mod, bnb.nn.Linear8bitLt) for mod in m.modules())
    if n8 != 7 * cfg["num_hidden_layers"]:
        raise SystemExit(f"{d}: {n8} Linear8bitLt layers")
    int8_matmul, _ = run(m, rows)
    m.train()  # MatMul8bitFp: the weight dequantised, F.linear in f32
    losses, logits0 = run(m, rows)
    fixture = {
        "folder": f"crates/temper-quant/tests/fixtures/bnb/model/{INT8_FOLDER}",
        "rows": rows,
        "losses": losses,
        "vocab": cfg["vocab_size"],
        "logits_row0": [float(f"{v:.9g}") for v in logits0.reshape(-1).tolist()],
        "losses_int8_matmul": int8_matmul,
        "settings": "from_pretrained(dtype=float32, device_map=cpu, attn_implementation=eager);"
        " bf16 parameters widened to float32; losses and logits in train mode (Linear8bitLt -> MatMul8bitFp,"
        " dequantised weight), losses_int8_matmul in eval mode (MatMul8bitLt, threshold 6.0); torch.no_grad;"
        " one thread; each row alone, labels = input ids, loss = mean over len-1 shifted tokens",
        "seed": SEED,
        "versions": versions(),
    }
    path = out / f"{INT8_FOLDER}.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"{INT8_FOLDER}: losses {losses}; LLM.int8 inference: {int8_matmul} -> {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    import bitsandbytes as bnb
    import transformers

    a.out.mkdir(parents=True, exist_ok=True)
    for folder in FOLDERS:
        d = MODELS / folder
        cfg = json.loads((d / "config.json").read_text())
        qc = cfg["quantization_config"]
        rows = make_rows(cfg["vocab_size"])

        m, n4 = load(d, torch.float32, True)
        if n4 != 7 * cfg["num_hidden_layers"]:
            raise SystemExit(f"{folder}: {n4} Linear4bit layers")
        losses, logits0 = run(m, rows)
        saved_dtype = qc["bnb_4bit_compute_dtype"]
        m2, _ = load(d, None, False)
        losses_saved, _ = run(m2, rows)

        fixture = {
            "folder": f"crates/temper-quant/tests/fixtures/bnb/model/{folder}",
            "quant_type": qc["bnb_4bit_quant_type"],
            "double_quant": qc["bnb_4bit_use_double_quant"],
            "rows": rows,
            "losses": losses,
            "vocab": cfg["vocab_size"],
            "logits_row0": [float(f"{v:.9g}") for v in logits0.reshape(-1).tolist()],
            "saved_compute_dtype": saved_dtype,
            "losses_saved_compute_dtype": losses_saved,
            "settings": "from_pretrained(dtype=float32, device_map=cpu, attn_implementation=eager);"
            " bf16 parameters widened to float32; every Linear4bit.compute_dtype = float32; torch.no_grad; one thread;"
            " each row alone, labels = input ids, loss = mean over len-1 shifted tokens",
            "seed": SEED,
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "bitsandbytes": bnb.__version__,
            },
        }
        path = a.out / f"{folder}.json"
        path.write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"{folder}: losses {losses}; with compute dtype {saved_dtype}: {losses_saved} -> {path}")
    int8_fixture(a.out)


if __name__ == "__main__":
    main()
