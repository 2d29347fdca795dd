#!/usr/bin/env bash
# LoRA training throughput on one NVIDIA GPU, temper beside transformers + PEFT on the same
# random-weight Llama folder (made once with `temper init-model`).
#
# usage: scripts/bench_gpu.sh [--shape llama2-7b|llama3-8b|qwen3-8b|gemma2-9b|phi3-mini|...] [--model-dir DIR] [--cases bf16:1024:4,...]
#                             [--steps N] [--peer PATH/anchor_hf.py] [--peer2 PATH/anchor_unsloth.py]
#                             [--max-positions N] [--profile]
# --peer names the transformers + PEFT benchmark script (it needs python3 with torch,
# transformers, peft and bitsandbytes), --peer2 a second one with the same interface (Unsloth's);
# without them only temper runs. Long cases (nf4:16384:1, ...) need --max-positions at least the
# sequence length: it raises max_position_embeddings in the random folder's config.json.
# --profile runs each temper case once more with `temper bench --profile` for the share of step
# time spent in attention. Each case prints one JSON line per system; the last lines are a table
# with tokens/s, peak GiB, MFU (model FLOPs per second over the GPU's dense bf16 peak; the
# peers' from temper's model FLOPs of the same case), the attention share and the ratio to the
# peers, and each system's first-step loss.
set -euo pipefail
cd "$(dirname "$0")/.."
temper=${TEMPER:-target/release/temper}
shape=llama2-7b; dir=""; cases="bf16:1024:4"; steps=10; peer=""; peer2=""; max_pos=""; profile=""
while [ $# -gt 0 ]; do
    case "$1" in
        --shape) shape=$2; shift 2 ;;
        --model-dir) dir=$2; shift 2 ;;
        --cases) cases=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --peer) peer=$2; shift 2 ;;
        --peer2) peer2=$2; shift 2 ;;
        --max-positions) max_pos=$2; shift 2 ;;
        --profile) profile=1; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
dir=${dir:-/tmp/temper-bench-$shape}
case "$shape" in llama2-7b) peer_shape=7b ;; llama3-8b) peer_shape=8b ;; *) peer_shape="" ;; esac
results=$(mktemp)

if [ ! -e "$dir/config.json" ]; then
    "$temper" init-model --shape "$shape" --out "$dir" --force
fi
if [ -n "$max_pos" ]; then
    python3 - "$dir/config.json" "$max_pos" <<'PY'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
cfg = json.load(open(path))
cfg["max_position_embeddings"] = max(n, cfg.get("max_position_embeddings", 0))
json.dump(cfg, open(path, "w"), indent=2)
PY
fi
for c in ${cases//,/ }; do
    IFS=: read -r quant seq batch <<<"$c"
    if [ "$quant" = bf16 ]; then
        "$temper" bench --model "$dir" --seq "$seq" --batch "$batch" --steps "$steps" --device cuda --dtype bfloat16 | tee -a "$results"
    elif [ "$quant" = nf4 ] || [ "$quant" = fp4 ]; then
        # The seed's QLoRA recipe: 4-bit base with double quantisation, bf16 compute, paged
        # AdamW; layer inputs kept in pinned host memory.
        "$temper" bench --model "$dir" --seq "$seq" --batch "$batch" --steps "$steps" --device cuda --dtype bfloat16 \
            --load-in-4bit "$quant" --double-quant --paged-optimizer --checkpoint-offload | tee -a "$results"
        if [ -n "$profile" ]; then
            "$temper" bench --model "$dir" --seq "$seq" --batch "$batch" --steps "$steps" --device cuda --dtype bfloat16 \
                --load-in-4bit "$quant" --double-quant --paged-optimizer --checkpoint-offload --profile \
                | sed 's/"case":"temper-/"case":"profiled-temper-/' | tee -a "$results"
        fi
    else
        echo "{\"case\": \"temper-$quant\", \"seq\": $seq, \"batch\": $batch, \"error\": \"not supported\"}" | tee -a "$results"
    fi
    if [ -n "$peer" ] && [ -n "$peer_shape" ]; then
        python3 "$peer" --shape "$peer_shape" --model-dir "$dir" --cases "$quant:$seq:$batch:all" --steps "$steps" | grep '^{' | tee -a "$results"
    elif [ -n "$peer" ]; then
        # Other families: the same measurement with the family's own module names.
        python3 scripts/peer_family_hf.py --anchor "$peer" --model-dir "$dir" --cases "$quant:$seq:$batch" --steps "$steps" | grep '^{' | tee -a "$results"
    fi
    if [ -n "$peer2" ]; then
        python3 "$peer2" --model-dir "$dir" --cases "$quant:$seq:$batch:all" --steps "$steps" | grep '^{' | tee -a "$results"
    fi
done
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def by(prefix):
    return {(r["seq"], r["batch"]): r for r in rows if r.get("case", "").startswith(prefix) and "tokens_per_s" in r}
hf, us, prof, tm = by("hf-"), by("unsloth-"), by("profiled-"), by("temper-")
def mfu(r):
    # The peers' MFU from temper's model FLOPs of the same case (same model, seq, LoRA).
    t = r if "mfu" in r else tm.get((r["seq"], r["batch"]))
    if not t or t.get("mfu") is None:
        return "-"
    return f"{100 * t['mfu'] * r['tokens_per_s'] / t['tokens_per_s']:.1f}%"
def ratio(r, peers):
    p = peers.get((r["seq"], r["batch"]))
    return f"{r['tokens_per_s'] / p['tokens_per_s']:.2f}x" if p else "-"
print(f"{'system':<28}{'seq':>7}{'batch':>6}{'tokens/s':>11}{'peak GiB':>10}{'MFU':>7}{'attn':>7}{'vs HF':>8}{'vs Unsloth':>11}{'loss 1':>9}")
for r in rows:
    if "tokens_per_s" not in r or r["case"].startswith("profiled-"):
        continue
    peak = r.get("peak_gib", r.get("peak_alloc_gib"))
    share = (prof.get((r["seq"], r["batch"])) or {}).get("attention_share") if r["case"].startswith("temper") else None
    attn = f"{100 * share:.0f}%" if share is not None else "-"
    print(f"{r['case']:<28}{r['seq']:>7}{r['batch']:>6}{r['tokens_per_s']:>11.0f}{peak:>10.2f}{mfu(r):>7}{attn:>7}{ratio(r, hf):>8}{ratio(r, us):>11}{r.get('loss_first', float('nan')):>9.4f}")
PY
