#!/usr/bin/env bash
# Builds llama.cpp (llama-bench, llama-server) from the sources vendored in the PyPI sdist of
# llama-cpp-python, so that parity checks and benchmarks need no network beyond PyPI.
# Usage: scripts/build-llama-cpp.sh [DEST]   (default: third_party/llama.cpp, git-ignored)
# Needs: python3 + pip, cmake, a C++ compiler (`make setup` installs them).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/third_party/llama.cpp}"
BIN="$DEST/build/bin"

if [[ -x "$BIN/llama-bench" && -x "$BIN/llama-server" ]]; then
    echo "llama.cpp already built in $BIN"
    exit 0
fi
for tool in cmake c++ python3; do
    command -v "$tool" >/dev/null || { echo "error: $tool is missing (run: make setup)" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "downloading llama-cpp-python==$VERSION sdist"
python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work" >/dev/null
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
[[ -f "$src/CMakeLists.txt" ]] || { echo "error: no vendored llama.cpp in the sdist" >&2; exit 1; }

mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.tmp"
cp -r "$src" "$DEST.tmp"
# Native build without AMX: on an Intel Xeon with AMX under KVM (one machine of this project's
# kind), this llama.cpp's AMX matmul segfaults on the first prompt of a Q4_K_M model. The -mno
# flags come after -march=native, so they win; on CPUs without AMX they change nothing.
cpu_cmake="$DEST.tmp/ggml/src/ggml-cpu/CMakeLists.txt"
if grep -q 'list(APPEND ARCH_FLAGS -march=native)' "$cpu_cmake"; then
    sed -i 's/list(APPEND ARCH_FLAGS -march=native)/list(APPEND ARCH_FLAGS -march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16)/' "$cpu_cmake"
else
    echo "warning: could not turn AMX off in $cpu_cmake; llama.cpp may crash on AMX machines" >&2
fi
cmake -S "$DEST.tmp" -B "$DEST.tmp/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$DEST.tmp/build" -j"$(nproc)" --target llama-bench llama-server
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "built: $BIN/llama-bench $BIN/llama-server"
