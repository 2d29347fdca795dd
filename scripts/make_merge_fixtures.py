#!/usr/bin/env python3
"""Fixtures for `temper merge` and `init_adapter`, made by transformers + PEFT.

Writes tests/fixtures/merge/:

  <case>.json, for each parity case (llama_gqa, qwen2, llama_rslora) of
  tests/fixtures/parity (its model/ and adapter/ are read, not rewritten):
      input_ids, labels    the parity sequences (labels unshifted, -100 = no loss)
      per_row_loss_f32     each sequence's loss with PEFT's ``merge_and_unload()`` of the
                           adapter into the float32 base (each row alone)
      per_row_loss_adapter the same rows with the adapter unmerged (a sanity reference)
      bf16_fnv1a           for every tensor of PEFT's merge into the base loaded in bfloat16
                           (the f32 base cast to bfloat16, round to nearest even; the adapter
                           kept in float32, PEFT's default autocast_adapter_dtype), FNV-1a 64
                           of its bytes, as 16 hex digits
  init_adapter/            a LoRA adapter (r 4, alpha 8, q_proj + v_proj) trained by PEFT for
                           two AdamW steps on the embedded tiny model (examples/tiny/model,
                           loaded in float32), on two batches of text rows
  init_adapter.json        the texts of the two batches and of the next one, and
                           ``next_loss``: the mean loss over every token of the next batch with
                           that adapter, what a training step's loss is (rows tokenised as TRL
                           tokenises text rows: tokenizer(text + eos))

With ``--temper PATH/TO/temper`` it also checks temper's merge against PEFT and transformers:
merges each case into float32 shards of at most 100 KB, loads the folder with
``AutoModelForCausalLM.from_pretrained`` and compares per-row losses (and that the index lists
every tensor once), and merges the bfloat16 base in bfloat16 and compares every tensor with
PEFT's bit for bit. It prints what it measured.

Usage:  python scripts/make_merge_fixtures.py [--temper target/release/temper]
Needs torch, transformers, peft, safetensors. One CPU thread, deterministic.
"""

import argparse
import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

import peft  # noqa: E402
import safetensors.torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PARITY = ROOT / "tests" / "fixtures" / "parity"
CASES = ["llama_gqa", "qwen2", "llama_rslora"]


def fnv1a(b: bytes) -> str:
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def parity_rows(case):
    exp = safetensors.torch.load_file(PARITY / case / "expected.safetensors")
    n = len(json.loads((PARITY / case / "case.json").read_text())["seq_lens"])
    return [(exp[f"input_ids.{i}"], exp[f"labels.{i}"]) for i in range(n)]


def row_losses(model, rows):
    out = []
    with torch.no_grad():
        for ids, labels in rows:
            out.append(model(input_ids=ids[None], labels=labels[None]).loss.float().item())
    return out


def load(path, dtype):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")


def merge_case(case, out_dir):
    base, adapter = PARITY / case / "model", PARITY / case / "adapter"
    rows = parity_rows(case)

    pm = PeftModel.from_pretrained(load(base, torch.float32), adapter)
    pm.eval()
    with_adapter = row_losses(pm, rows)
    merged = pm.merge_and_unload()
    merged_losses = row_losses(merged, rows)

    pm16 = PeftModel.from_pretrained(load(base, torch.bfloat16), adapter)
    lora_dtypes = {p.dtype for n, p in pm16.named_parameters() if "lora_" in n}
    assert lora_dtypes == {torch.float32}, lora_dtypes
    merged16 = pm16.merge_and_unload()
    sd = merged16.state_dict()
    hashes = {k: fnv1a(tensor_bytes(v)) for k, v in sorted(sd.items())}
    if merged16.config.tie_word_embeddings:
        hashes.pop("lm_head.weight", None)  # not saved: tied to the embeddings

    fixture = {
        "case": case,
        "input_ids": [r[0].tolist() for r in rows],
        "labels": [r[1].tolist() for r in rows],
        "per_row_loss_f32": merged_losses,
        "per_row_loss_adapter": with_adapter,
        "bf16_fnv1a": hashes,
        "versions": versions(),
    }
    (out_dir / f"{case}.json").write_text(json.dumps(fixture, indent=1) + "\n")
    return fixture, merged16


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


# --- init_adapter ---------------------------------------------------------------------------

TINY = ROOT / "examples" / "tiny" / "model"
BATCHES = [
    ["The cat sat on the mat.", "What is 12 plus 30? 12 plus 30 is 42."],
    ["A strawberry is red.", "The word \"magnet\" has 6 letters."],
    ["What colour is a cherry? A cherry is red.", "67 plus 60 is 127.",
     "How many letters are in \"apple\"?"],
]
INIT = dict(r=4, alpha=8, targets=["q_proj", "v_proj"], lr=2e-3, seed=5)


def batch_loss(model, tok, texts):
    """Mean loss over every counted token of the batch (each row alone, no padding)."""
    total, count = 0.0, 0
    for t in texts:
        ids = torch.tensor(tok(t + tok.eos_token)["input_ids"])[None]
        out = model(input_ids=ids, labels=ids)
        n = ids.shape[1] - 1
        total = total + out.loss * n
        count += n
    return total / count


def make_init_adapter(out_dir):
    tok = AutoTokenizer.from_pretrained(TINY)
    model = load(TINY, torch.float32)
    torch.manual_seed(INIT["seed"])
    cfg = LoraConfig(r=INIT["r"], lora_alpha=INIT["alpha"], lora_dropout=0.0,
                     target_modules=INIT["targets"], task_type="CAUSAL_LM", bias="none")
    pm = get_peft_model(model, cfg)
    params = [p for n, p in pm.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=INIT["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, foreach=False)
    losses = []
    for texts in BATCHES[:2]:
        opt.zero_grad()
        loss = batch_loss(pm, tok, texts)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    dest = out_dir / "init_adapter"
    if dest.exists():
        shutil.rmtree(dest)
    pm.save_pretrained(dest)
    (dest / "README.md").unlink(missing_ok=True)
    acfg_path = dest / "adapter_config.json"
    acfg = json.loads(acfg_path.read_text())
    acfg["base_model_name_or_path"] = "examples/tiny/model"
    acfg["target_modules"] = sorted(acfg["target_modules"])
    acfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")

    # The next batch's loss with the saved adapter, loaded back as a user would.
    back = PeftModel.from_pretrained(load(TINY, torch.float32), dest)
    back.eval()
    with torch.no_grad():
        next_loss = batch_loss(back, tok, BATCHES[2]).item()
    info = {
        "lora": {"r": INIT["r"], "lora_alpha": INIT["alpha"], "target_modules": INIT["targets"]},
        "optimizer": {"name": "AdamW", "lr": INIT["lr"], "steps": 2, "weight_decay": 0.0},
        "batches": BATCHES[:2],
        "train_losses": losses,
        "next_texts": BATCHES[2],
        "next_loss": next_loss,
        "versions": versions(),
    }
    (out_dir / "init_adapter.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


# --- checking temper's merge ----------------------------------------------------------------

def check_temper(temper, case, fixture, merged16):
    base, adapter = PARITY / case / "model", PARITY / case / "adapter"
    rows = parity_rows(case)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = tmp / "f32"
        subprocess.run([temper, "merge", "--model", str(base), "--adapter", str(adapter),
                        "--out", str(out), "--dtype", "float32", "--max-shard-size", "100KB"],
                       check=True, capture_output=True)
        index = json.loads((out / "model.safetensors.index.json").read_text())
        names = list(index["weight_map"])
        shards = sorted(set(index["weight_map"].values()))
        in_files = []
        for s in shards:
            in_files += list(safetensors.torch.load_file(out / s))
        assert sorted(in_files) == sorted(names) and len(set(in_files)) == len(in_files)
        m = load(out, torch.float32)
        got = row_losses(m, rows)
        want = fixture["per_row_loss_f32"]
        worst = max(abs(a - b) / abs(b) for a, b in zip(got, want))
        print(f"  {case}: transformers loads temper's float32 merge ({len(shards)} shards, "
              f"{len(names)} tensors): per-row loss vs PEFT merge_and_unload, worst rel {worst:.2e}")
        assert worst < 1e-5, (got, want)

        # bf16: the f32 base saved in bf16, merged by temper in bf16.
        b16 = tmp / "base_bf16"
        load(base, torch.bfloat16).save_pretrained(b16)
        out16 = tmp / "bf16"
        subprocess.run([temper, "merge", "--model", str(b16), "--adapter", str(adapter),
                        "--out", str(out16)], check=True, capture_output=True)
        mine = safetensors.torch.load_file(out16 / "model.safetensors")
        theirs = merged16.state_dict()
        diff = 0
        for k, v in mine.items():
            assert v.dtype == torch.bfloat16, (k, v.dtype)
            diff += int((v.view(torch.int16) != theirs[k].view(torch.int16)).sum())
        print(f"  {case}: temper's bf16 merge vs PEFT's: {diff} differing values of "
              f"{sum(v.numel() for v in mine.values())}")
        assert diff == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "merge")
    ap.add_argument("--temper", type=Path, default=None,
                    help="a temper binary: check its merge against PEFT and transformers")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        fixture, merged16 = merge_case(case, args.out)
        print(f"{case}: merged per-row loss {[round(x, 6) for x in fixture['per_row_loss_f32']]}"
              f" (adapter unmerged {[round(x, 6) for x in fixture['per_row_loss_adapter']]})")
        if args.temper:
            check_temper(args.temper, case, fixture, merged16)
    info = make_init_adapter(args.out)
    print(f"init_adapter: train losses {info['train_losses']}, next batch loss "
          f"{info['next_loss']:.6f}")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"fixtures: {size} bytes in {args.out}")


if __name__ == "__main__":
    main()
