#!/usr/bin/env bash
# Developer build: compile ccr_fast._C into build/dev and copy it next to the sources (ccr_fast/), so that
# `python -c "import ccr_fast"` from the repo root uses it. Serialised with flock so parallel callers are safe.
# CCR_FAST_CUDA=OFF by default here (fast); set CCR_FAST_CUDA=ON to compile the .cu files too.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
exec 9>build/.lock
flock 9
BDIR=build/dev-${CCR_FAST_CUDA:-OFF}
cmake -S . -B "$BDIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCCR_FAST_CUDA="${CCR_FAST_CUDA:-OFF}" \
  -Dpybind11_DIR="$(python -c 'import pybind11;print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$(command -v python)" > "$BDIR.configure.log" 2>&1 || { cat "$BDIR.configure.log"; exit 1; }
cmake --build "$BDIR" -j 2
so=$(ls "$BDIR"/_C*.so); cp "$so" "ccr_fast/.tmp_$(basename "$so")" && mv -f "ccr_fast/.tmp_$(basename "$so")" "ccr_fast/$(basename "$so")"
echo "built $(ls ccr_fast/_C*.so)"
