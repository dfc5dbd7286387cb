#!/usr/bin/env bash
# Installs the CUDA 13.0 build toolkit (nvcc, cudart, cuBLAS and NCCL headers and libraries) from
# PyPI wheels into DIR, plus libclang for bindgen, and prints the toolkit root to export as CUDA_PATH.
#
#   scripts/install-cuda-toolkit.sh DIR        # e.g. "$HOME/.cache/alexnet-cuda"
#   export CUDA_PATH="$(scripts/install-cuda-toolkit.sh DIR | tail -n1)"
#
# Why wheels: they need no root, no apt repository and no driver, take ~10 s and ~840 MB, and are
# pinned to the 13.0 toolkit that matches the GPU hosts (driver 580). CUDA 12 wheels have no nvcc.
# Idempotent: a second run with the same DIR checks the stamp file and returns at once.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
DIR="$1"
ROOT="$DIR/nvidia/cu13"

# The exact set, measured to be complete: cccl is not a dependency of the others but
# cuda_fp16.h / cublas_v2.h include its headers.
WHEELS=(
    "nvidia-cuda-nvcc==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-crt==13.0.88"
    "nvidia-cuda-runtime==13.0.96"
    "nvidia-cuda-cccl==13.0.85"
    "nvidia-cublas==13.0.2.14"
    # For the `nccl` feature; 2.27.7 is the release the CUDA 13.0 PyTorch wheels pin.
    "nvidia-nccl-cu13==2.27.7"
)
STAMP="$DIR/.alexnet-toolkit-stamp"
WANT="${WHEELS[*]}"

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" || ! -x "$ROOT/bin/nvcc" ]]; then
    mkdir -p "$DIR"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
        --target "$DIR" "${WHEELS[@]}" >&2
    # Some wheel sets ship bin/nvcc without the execute bit.
    chmod +x "$ROOT"/bin/* "$ROOT"/nvvm/bin/* 2>/dev/null || true
    printf '%s' "$WANT" >"$STAMP"
fi

[[ -x "$ROOT/bin/nvcc" ]] || { echo "nvcc missing under $ROOT/bin" >&2; exit 1; }
[[ -x "$ROOT/nvvm/bin/cicc" ]] || { echo "cicc missing under $ROOT/nvvm/bin" >&2; exit 1; }
[[ -f "$ROOT/include/cublas_v2.h" ]] || { echo "cublas_v2.h missing under $ROOT/include" >&2; exit 1; }
[[ -f "$DIR/nvidia/nccl/include/nccl.h" ]] || { echo "nccl.h missing under $DIR/nvidia/nccl/include" >&2; exit 1; }

# The NCCL wheel installs beside the toolkit (nvidia/nccl/); links put it inside, so CUDA_PATH
# alone lets build.rs find nccl.h and libnccl.
[[ -e "$ROOT/include/nccl.h" ]] || ln -s ../../nccl/include/nccl.h "$ROOT/include/nccl.h"
[[ -e "$ROOT/lib/libnccl.so.2" ]] || ln -s ../../nccl/lib/libnccl.so.2 "$ROOT/lib/libnccl.so.2"

# The wheels ship only versioned sonames in lib/; the linker's -lcudart_static needs no link,
# but -lcublas needs libcublas.so, and tools that expect lib64/ get one.
for so in "$ROOT"/lib/lib*.so.*; do
    [[ -e "$so" ]] || continue
    base="${so%%.so.*}.so"
    [[ -e "$base" ]] || ln -s "$(basename "$so")" "$base"
done
[[ -e "$ROOT/lib64" ]] || ln -s lib "$ROOT/lib64"

# bindgen loads libclang at run time; install it only if no libclang.so is findable.
# (libclang-cpp.so is the C++ API, which bindgen cannot use.)
have_libclang() {
    ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so' && return 0
    compgen -G "/usr/lib/llvm-*/lib/libclang.so*" >/dev/null && return 0
    compgen -G "/usr/lib/llvm-*/lib/libclang-[0-9]*.so*" >/dev/null && return 0
    [[ -n "${LIBCLANG_PATH:-}" ]] && compgen -G "$LIBCLANG_PATH/libclang*.so*" >/dev/null
}
if ! have_libclang; then
    echo "installing libclang for bindgen" >&2
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libclang1-14 libclang-common-14-dev >&2
fi

echo "$ROOT"
