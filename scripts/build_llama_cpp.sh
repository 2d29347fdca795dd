#!/usr/bin/env bash
# Builds llama.cpp (CPU only) from the sources vendored in the llama-cpp-python sdist on PyPI,
# once, into target/llama-cpp/build: libllama.so and the libggml*.so it loads (also usable by
# the ctypes bindings that the same sdist ships, llama_cpp/), and in its bin/ two small drivers
# of llama.cpp's C API: llama_logits (scripts/llama_logits.cpp) and llama_quantize
# (scripts/llama_quantize.cpp, llama-quantize's own library call). With --perplexity, also the
# tool llama-perplexity, which needs llama.cpp's `common` library (several minutes more).
# Built for the x86-64 AVX2/FMA baseline (GGML_NATIVE=OFF) rather than for this CPU, so one
# build serves any machine it lands on. Prints the build folder.
# Needs python3 with pip, a C/C++ compiler; cmake comes from PyPI into target/venv.
set -euo pipefail
cd "$(dirname "$0")/.."

perplexity=0
case "${1:-}" in
    "") ;;
    --perplexity) perplexity=1 ;;
    *) echo "usage: scripts/build_llama_cpp.sh [--perplexity]" >&2; exit 2 ;;
esac

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
targets=(llama)
if [ "$perplexity" = 1 ]; then
    targets+=(llama-perplexity)
fi
if [ ! -e "$build/bin/libllama.so" ] \
    || { [ "$perplexity" = 1 ] && [ ! -x "$build/bin/llama-perplexity" ]; }; then
    echo "building llama.cpp (CPU only: ${targets[*]}) in $build; log in $root/build.log" >&2
    "$venv/bin/cmake" -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$root/cmake.log" 2>&1 \
        || { tail -n 30 "$root/cmake.log" >&2; echo "cmake failed; see $root/cmake.log" >&2; exit 1; }
    "$venv/bin/cmake" --build "$build" -j "$(nproc)" --target "${targets[@]}" \
        >"$root/build.log" 2>&1 \
        || { tail -n 30 "$root/build.log" >&2; echo "build failed; see $root/build.log" >&2; exit 1; }
fi
for tool in llama_logits llama_quantize; do
    if [ ! -x "$build/bin/$tool" ] || [ "scripts/$tool.cpp" -nt "$build/bin/$tool" ]; then
        g++ -O2 -std=c++17 -I "$src/vendor/llama.cpp/include" \
            -I "$src/vendor/llama.cpp/ggml/include" "scripts/$tool.cpp" \
            -L "$build/bin" -lllama -Wl,-rpath,"$build/bin" -o "$build/bin/$tool"
    fi
done
echo "$build"
