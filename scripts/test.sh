#!/usr/bin/env bash
# Runs every test. Needs a Rust toolchain; fetches NVRTC (the CUDA run-time compiler,
# no GPU needed) from PyPI once into target/nvrtc so the kernel-compile test can check every
# CUDA kernel for every supported GPU architecture. GPU tests are marked ignored; on a machine
# with an NVIDIA GPU run them with: scripts/test.sh -- --include-ignored
# Then checks temper's GGUF exports with llama.cpp itself (scripts/check_llama_cpp.sh --quick:
# builds libllama CPU-only once into target/llama-cpp); TEMPER_SKIP_LLAMA_CPP=1 skips that.
set -euo pipefail
cd "$(dirname "$0")/.."

nvrtc_dir="$PWD/target/nvrtc"
if [ ! -e "$nvrtc_dir/lib/libnvrtc.so.13" ]; then
    echo "fetching NVRTC 13.0 from PyPI into $nvrtc_dir" >&2
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --dest "$tmp" "nvidia-cuda-nvrtc==13.0.*"
    python3 -m zipfile -e "$tmp"/nvidia_cuda_nvrtc-*.whl "$tmp/unpacked"
    mkdir -p "$nvrtc_dir"
    rm -rf "$nvrtc_dir/lib"
    cp -r "$tmp/unpacked/nvidia/cu13/lib" "$nvrtc_dir/lib"
    rm -rf "$tmp"
fi
export LD_LIBRARY_PATH="$nvrtc_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cargo test --workspace --locked "$@"

if [ "${TEMPER_SKIP_LLAMA_CPP:-0}" = 1 ]; then
    echo "== llama.cpp check of the GGUF exports: skipped (TEMPER_SKIP_LLAMA_CPP=1)"
else
    echo "== llama.cpp check of the GGUF exports (scripts/check_llama_cpp.sh --quick; skip with TEMPER_SKIP_LLAMA_CPP=1)"
    # The temper binary the tests above just built (dev profile).
    TEMPER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/temper" scripts/check_llama_cpp.sh --quick
fi
