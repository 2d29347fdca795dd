#!/usr/bin/env bash
# LoRA training throughput on one NVIDIA GPU, temper beside transformers + PEFT on the same
# random-weight Llama folder (made once with `temper init-model`).
#
# usage: scripts/bench_gpu.sh [--shape llama2-7b|llama3-8b] [--model-dir DIR] [--cases bf16:1024:4,...]
#                             [--steps N] [--peer PATH/anchor_hf.py]
# --peer names the transformers + PEFT benchmark script (it needs python3 with torch,
# transformers, peft and bitsandbytes); without it only temper runs. Each case prints one JSON
# line per system; the last lines are a table with tokens/s, peak GiB and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
temper=${TEMPER:-target/release/temper}
shape=llama2-7b; dir=""; cases="bf16:1024:4"; steps=10; peer=""
while [ $# -gt 0 ]; do
    case "$1" in
        --shape) shape=$2; shift 2 ;;
        --model-dir) dir=$2; shift 2 ;;
        --cases) cases=$2; shift 2 ;;
        --steps) steps=$2; shift 2 ;;
        --peer) peer=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
dir=${dir:-/tmp/temper-bench-$shape}
case "$shape" in llama2-7b) peer_shape=7b ;; llama3-8b) peer_shape=8b ;; *) peer_shape=$shape ;; esac
results=$(mktemp)

if [ ! -e "$dir/config.json" ]; then
    "$temper" init-model --shape "$shape" --out "$dir"
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
    else
        echo "{\"case\": \"temper-$quant\", \"seq\": $seq, \"batch\": $batch, \"error\": \"not supported\"}" | tee -a "$results"
    fi
    if [ -n "$peer" ]; then
        python3 "$peer" --shape "$peer_shape" --model-dir "$dir" --cases "$quant:$seq:$batch:all" --steps "$steps" | grep '^{' | tee -a "$results"
    fi
done
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
peers = {(r["seq"], r["batch"]): r for r in rows if r.get("case", "").startswith("hf-") and "tokens_per_s" in r}
print(f"{'system':<22}{'seq':>6}{'batch':>6}{'tokens/s':>11}{'peak GiB':>10}{'vs peer':>9}")
for r in rows:
    if "tokens_per_s" not in r:
        continue
    peak = r.get("peak_gib", r.get("peak_alloc_gib"))
    p = peers.get((r["seq"], r["batch"]))
    ratio = f"{r['tokens_per_s'] / p['tokens_per_s']:.2f}x" if p else "-"
    print(f"{r['case']:<22}{r['seq']:>6}{r['batch']:>6}{r['tokens_per_s']:>11.0f}{peak:>10.2f}{ratio:>9}")
PY
