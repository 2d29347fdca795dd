#!/usr/bin/env bash
# Builds llama.cpp (CPU only) from the sources vendored in the llama-cpp-python sdist on PyPI,
# once, into target/llama-cpp: the tools llama-perplexity and llama-quantize, and libllama.so
# for the ctypes bindings that the same sdist ships (llama_cpp/). Prints the build folder.
# Needs python3 with pip, a C/C++ compiler; cmake comes from PyPI into target/venv.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.3.36
root=$PWD/target/llama-cpp
src=$root/llama_cpp_python-$version
build=$root/build
venv=$PWD/target/venv

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if [ ! -x "$venv/bin/cmake" ]; then
    "$venv/bin/pip" install --quiet cmake
fi
if [ ! -d "$src/vendor/llama.cpp" ]; then
    echo "fetching llama-cpp-python $version (sdist, llama.cpp sources) from PyPI" >&2
    mkdir -p "$root"
    # --no-binary for this package only: its build tools come as wheels.
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        --dest "$root" "llama-cpp-python==$version"
    tar -xzf "$root/llama_cpp_python-$version.tar.gz" -C "$root"
fi
if [ ! -x "$build/bin/llama-perplexity" ] || [ ! -x "$build/bin/llama-quantize" ] \
    || [ ! -e "$build/bin/libllama.so" ]; then
    echo "building llama.cpp (CPU only) in $build" >&2
    "$venv/bin/cmake" -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$root/cmake.log" 2>&1
    "$venv/bin/cmake" --build "$build" -j "$(nproc)" \
        --target llama llama-perplexity llama-quantize >"$root/build.log" 2>&1 \
        || { tail -n 30 "$root/build.log" >&2; exit 1; }
fi
echo "$build"
