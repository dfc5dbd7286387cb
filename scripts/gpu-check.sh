#!/usr/bin/env bash
# The GPU check, in two halves (the GPU host has no Rust toolchain and no network):
#
#   scripts/gpu-check.sh prepare   # here (no GPU needed): build the CUDA test and bench binaries
#                                  # (release, stripped) and pack them into .gpu-pack/ (< 60 MiB)
#   scripts/gpu-check.sh run       # on the GPU host, from the repo root with .gpu-pack/ present:
#                                  # GPU tests, one-step GPU-vs-CPU model check, throughput bench
#                                  # beside PyTorch+cuDNN, and an A/B of each engine option
#                                  # (--gpu-conv-whole-chunk, --gpu-lrn-by-pixel,
#                                  # --gpu-copy-stream), and --all-reduce nccl over one rank (built
#                                  # with --features nccl); logs to $OUT (if set) or .gpu-pack/logs;
#                                  # a summary table last. Stays under 7 minutes.
#
# GPU_CHECK_CANDIDATE=<git ref> scripts/gpu-check.sh prepare also builds that commit (in a
# temporary worktree) into .gpu-pack/candidate/; run then tests it too and benches it right after
# the checked-out code, each configuration back to back on the same card: an A/B of a change in
# one call, with no baseline from another run (or another card) needed.
#
# prepare needs CUDA_PATH (a CUDA 13.0 toolkit); without it, it installs the pinned PyPI toolkit
# with scripts/install-cuda-toolkit.sh into ${ALEXNET_CUDA_DIR:-$HOME/.cache/alexnet-cuda13}.
# run finds libcublas.so.13 on the host (PyTorch's pip packages or a system toolkit) and puts its
# directory on LD_LIBRARY_PATH: cuBLAS (~600 MB) is never packed.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=.gpu-pack
LIMIT_MIB=60

# build_into DIR: the GPU test binaries (tests/cuda_*.rs) and alexnet-cli of the
# tree in the current directory, release and stripped, into DIR/bin; the tests' names in
# DIR/tests.txt.
build_into() {
    local dir=$1
    mkdir -p "$dir/bin"
    local json="$dir/cargo-tests.json"
    cargo test --release --features cuda --test cuda_ops --test cuda_model --no-run \
        --message-format=json >"$json"
    python3 - "$json" "$dir/bin" >"$dir/tests.txt" <<'EOF'
import json, shutil, sys, os
src, dst = sys.argv[1], sys.argv[2]
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if "test" not in t["kind"]:
        continue
    if not t["name"].startswith("cuda_"):
        continue
    shutil.copy2(m["executable"], os.path.join(dst, t["name"]))
    print(t["name"])
EOF
    rm -f "$json"
    if [[ ! -s "$dir/tests.txt" ]]; then
        echo "no cuda_* test binaries were built" >&2
        exit 1
    fi
    if cargo build --release --features cuda --bin alexnet-cli; then
        cp "${CARGO_TARGET_DIR:-target}/release/alexnet-cli" "$dir/bin/"
    else
        echo "warning: alexnet-cli did not build; run will skip the Rust bench" >&2
    fi
    strip "$dir"/bin/* 2>/dev/null || true
}

# build_nccl_into DIR: the same tree built with --features nccl (NCCL for the gradient sums,
# which also links MPI) into DIR/bin: alexnet-cli and the cuda_model test (its one-rank NCCL
# test), with the MPI libraries they load in DIR/lib (the GPU host has no OpenMPI; under one
# process MPI is never initialised, only loaded). libnccl is found on the host, like cuBLAS.
build_nccl_into() {
    local dir=$1
    mkdir -p "$dir/bin" "$dir/lib"
    local json="$dir/cargo-tests.json"
    cargo test --release --features nccl --test cuda_model --no-run --message-format=json >"$json"
    python3 - "$json" "$dir/bin" <<'EOF2'
import json, shutil, sys, os
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_model":
        shutil.copy2(m["executable"], os.path.join(sys.argv[2], "cuda_model"))
EOF2
    rm -f "$json"
    cargo build --release --features nccl --bin alexnet-cli
    cp "${CARGO_TARGET_DIR:-target}/release/alexnet-cli" "$dir/bin/"
    strip "$dir"/bin/* 2>/dev/null || true
    # OpenMPI and what it pulls in (not the C library, CUDA or NCCL: the host has those).
    ldd "$dir/bin/alexnet-cli" | awk '/=> \//{print $3}' |
        grep -E '/lib(mpi|open-rte|open-pal|hwloc|event|udev|pmix)[^/]*$' |
        while read -r lib; do cp -L "$lib" "$dir/lib/"; done
}

prepare() {
    if [[ -z "${CUDA_PATH:-}" ]]; then
        CUDA_PATH="$(bash scripts/install-cuda-toolkit.sh "${ALEXNET_CUDA_DIR:-$HOME/.cache/alexnet-cuda13}" | tail -n1)"
        export CUDA_PATH
    fi
    echo "CUDA_PATH=$CUDA_PATH"
    # No debug info and stripped symbols: the binaries must fit the pack limit.
    export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols

    rm -rf "$PACK"
    build_into "$PACK"
    if [[ -f "$CUDA_PATH/include/nccl.h" ]] && command -v mpicc >/dev/null; then
        build_nccl_into "$PACK/nccl"
    else
        echo "warning: no nccl.h in the toolkit or no OpenMPI; run will skip the NCCL checks" >&2
    fi
    if [[ -f benches/compare_pytorch.py ]]; then
        cp benches/compare_pytorch.py "$PACK/"
    else
        echo "warning: benches/compare_pytorch.py missing; run will skip PyTorch" >&2
    fi
    local candidate=""
    if [[ -n "${GPU_CHECK_CANDIDATE:-}" ]]; then
        candidate="$(git rev-parse --short "$GPU_CHECK_CANDIDATE^{commit}")"
        local tree=target/gpu-check-candidate root=$PWD
        git worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
        git worktree prune
        git worktree add --detach "$tree" "$candidate" >/dev/null
        # The same target dir: only the alexnet crates are rebuilt, not every dependency.
        (cd "$tree" && export CARGO_TARGET_DIR="$root/target" && build_into "$root/$PACK/candidate")
        git worktree remove --force "$tree"
        echo "$GPU_CHECK_CANDIDATE ($candidate)" >"$PACK/candidate/ref.txt"
    fi

    {
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
        echo "toolkit: $("$CUDA_PATH/bin/nvcc" --version | tail -n1)"
        echo "tests: $(tr '\n' ' ' <"$PACK/tests.txt")"
        (cd "$PACK" && ls -l bin)
        [[ -d "$PACK/nccl" ]] && (cd "$PACK/nccl" && ls -l bin lib)
        if [[ -n "$candidate" ]]; then
            echo "candidate: $GPU_CHECK_CANDIDATE = $candidate: $(git log -1 --format=%s "$candidate" | cut -c1-100)"
            (cd "$PACK/candidate" && ls -l bin)
        fi
    } >"$PACK/manifest.txt"
    cat "$PACK/manifest.txt"

    local mib
    mib=$(du -sm "$PACK" | cut -f1)
    echo "pack: $mib MiB in $PACK"
    if ((mib >= LIMIT_MIB)); then
        echo "pack is $mib MiB, over the $LIMIT_MIB MiB limit" >&2
        exit 1
    fi
}

# ---- run (GPU host) ----

START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-400}
SUMMARY=()

remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME LOG CAP_S CMD...: runs CMD with at most min(CAP_S, time left), logs to LOG, records
# the outcome and the last matching result line in the summary.
step() {
    local name=$1 log=$2 cap=$3
    shift 3
    local left
    left=$(remaining)
    if ((left < 15)); then
        SUMMARY+=("$(printf '%-36s %-8s %s' "$name" "SKIPPED" "out of time")")
        return 0
    fi
    ((cap > left)) && cap=$left
    local t0 rc=0
    t0=$(date +%s)
    echo "== $name (limit ${cap}s)"
    timeout "$cap" "$@" >"$log" 2>&1 || rc=$?
    local dt=$(($(date +%s) - t0))
    tail -n 25 "$log"
    local status="ok"
    ((rc == 124)) && status="TIMEOUT"
    ((rc != 0 && rc != 124)) && status="FAIL($rc)"
    local detail
    detail=$(grep -E "test result:|images/s|TFLOP/s|GB/s" "$log" | tail -n 1 | cut -c1-80 || true)
    # A test binary passes without a device too: say so, or a skip reads as a GPU pass.
    local skips
    skips=$(grep -c "skipped: no CUDA device" "$log" || true)
    ((skips > 0)) && detail="$detail [$skips GPU tests SKIPPED: no device]"
    SUMMARY+=("$(printf '%-36s %-8s %4ss  %s' "$name" "$status" "$dt" "$detail")")
}

# The summary's prefix for a variant's steps: none for the checked-out build.
tag() {
    [[ $1 == "$PACK" ]] || echo "cand. "
}

# bench NAME LOG CAP ARGS...: `alexnet-cli bench ARGS --batch-size 128 --steps 20` on every
# variant (the variables of run: variants, logs).
bench() {
    local name=$1 log=$2 cap=$3 v
    shift 3
    for v in "${variants[@]}"; do
        if [[ -x "$v/bin/alexnet-cli" ]]; then
            step "$(tag "$v")$name" "$logs/$(tag "$v" | tr -d ' ')$log.log" "$cap" \
                "$v/bin/alexnet-cli" bench "$@" --batch-size 128 --steps 20
        else
            SUMMARY+=("$(printf '%-36s %-8s %s' "$(tag "$v")$name" "SKIPPED" "alexnet-cli not packed")")
        fi
    done
}

# find_lib NAME-GLOB: the directory of the first library matching it on the host.
find_lib() {
    local hit dir
    for root in /opt /usr/local /usr/lib /usr /; do
        hit=$(timeout 60 find "$root" -name "$1" -not -path '/proc/*' 2>/dev/null | head -n1 || true)
        if [[ -n "$hit" ]]; then
            dir=$(dirname "$hit")
            echo "$dir"
            return 0
        fi
    done
    return 1
}

run() {
    [[ -d "$PACK/bin" ]] || { echo "$PACK/bin missing: run 'scripts/gpu-check.sh prepare' first" >&2; exit 1; }
    local logs=${OUT:-$PACK/logs}
    mkdir -p "$logs"
    cat "$PACK/manifest.txt" 2>/dev/null || true

    local card
    if command -v nvidia-smi >/dev/null; then
        card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n1 || true)
    else
        card="no nvidia-smi (no NVIDIA driver on this host)"
    fi
    echo "card: $card"
    nvidia-smi >"$logs/nvidia-smi.txt" 2>&1 || true

    local cublas_dir
    if cublas_dir=$(find_lib 'libcublas.so.13*'); then
        echo "libcublas.so.13 in $cublas_dir"
        export LD_LIBRARY_PATH="$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    else
        echo "warning: libcublas.so.13 not found; the binaries will not load" >&2
    fi

    local py=python3
    [[ -x /opt/torch/.venv/bin/python ]] && py=/opt/torch/.venv/bin/python

    # The card's f32 GEMM rate (TF32 off), the yardstick for the per-layer GFLOP/s.
    step "sgemm rate (torch, f32)" "$logs/sgemm.log" 40 "$py" - <<'EOF'
import time, torch
torch.backends.cuda.matmul.allow_tf32 = False
n = 8192
a = torch.randn(n, n, device="cuda"); b = torch.randn(n, n, device="cuda")
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.time(); reps = 20
for _ in range(reps): a @ b
torch.cuda.synchronize(); dt = time.time() - t
print(f"{torch.cuda.get_device_name()}: sgemm {n}^3 {2 * n**3 * reps / dt / 1e12:.1f} TFLOP/s")
EOF

    # Host-to-device rate for one batch of 227x227 inputs (79 MB): what an upload per step costs.
    step "h2d copy rate (torch)" "$logs/h2d.log" 30 "$py" - <<'EOF'
import time, torch
n = 128 * 3 * 227 * 227
dev = torch.empty(n, device="cuda")
for pinned in (False, True):
    host = torch.randn(n).pin_memory() if pinned else torch.randn(n)
    for _ in range(3): dev.copy_(host)
    torch.cuda.synchronize(); t = time.time(); reps = 20
    for _ in range(reps): dev.copy_(host)
    torch.cuda.synchronize(); dt = (time.time() - t) / reps
    print(f"h2d {'pinned' if pinned else 'pageable'}: {dt * 1e3:.2f} ms per 79 MB batch, {n * 4 / dt / 1e9:.1f} GB/s")
EOF

    # The checked-out build, then the candidate's when packed (prepare with GPU_CHECK_CANDIDATE).
    local variants=("$PACK") v name
    if [[ -d "$PACK/candidate/bin" ]]; then
        variants+=("$PACK/candidate")
        echo "candidate: $(cat "$PACK/candidate/ref.txt" 2>/dev/null)"
    fi
    for v in "${variants[@]}"; do
        while read -r name; do
            [[ -n "$name" ]] || continue
            # stdin from /dev/null: the loop's own stdin is the list of names.
            step "$(tag "$v")test $name" "$logs/$(tag "$v" | tr -d ' ')test-$name.log" 200 \
                "$v/bin/$name" --test-threads=1 --nocapture </dev/null
        done <"$v/tests.txt"
    done

    # The engine options (issue #15, off by default) first with their op tests, then A/B'd
    # against the default right after its bench: the ops against the f64 reference with each
    # option on (~20 s in all), then images/s with each option alone and all three together
    # (~15 s each: 20 steps at batch 128 plus start-up).
    local opt_tests="conv_whole_chunk lrn_by_pixel prefetch_on_copy_stream bf16_gemms"
    if [[ -x "$PACK/bin/cuda_ops" ]]; then
        # Several filters: libtest runs the tests matching any of them.
        # shellcheck disable=SC2086
        step "options: op tests" "$logs/options-tests.log" 90 \
            "$PACK/bin/cuda_ops" --test-threads=1 --nocapture $opt_tests </dev/null
    fi
    # Each configuration on every variant back to back, so the A/B shares the card's state.
    bench "bench alexnet-rs cuda b128" bench-rust 120 --device cuda
    bench "bench cuda --gpu-conv-whole-chunk" bench-opt-conv 60 --device cuda --gpu-conv-whole-chunk
    bench "bench cuda --gpu-lrn-by-pixel" bench-opt-lrn 60 --device cuda --gpu-lrn-by-pixel
    bench "bench cuda --gpu-copy-stream" bench-opt-copy 60 --device cuda --gpu-copy-stream
    bench "bench cuda all three options" bench-opt-all 60 --device cuda \
        --gpu-conv-whole-chunk --gpu-lrn-by-pixel --gpu-copy-stream
    # bf16 GEMM operands (~15 s); its accuracy against the f64 reference is cuda_ops::bf16_gemms.
    bench "bench cuda --precision bf16" bench-bf16 60 --device cuda --precision bf16
    # The small-card default scratch (several rounds per layer), TF32, and model parallelism
    # (the two columns on two engines: two GPUs, or two streams of one).
    bench "bench cuda scratch 256 MiB" bench-rust-scratch 60 --device cuda --gpu-scratch-mib 256
    bench "bench alexnet-rs cuda tf32" bench-rust-tf32 60 --device cuda --tf32
    bench "bench alexnet-rs cuda --gpus 2" bench-rust-gpus2 120 --device cuda --gpus 2
    # The test-mode forward (eval, predict, features) at batch 128 and its batch-1 latency.
    bench "bench cuda --inference" bench-rust-inference 60 --device cuda --inference
    if [[ -f "$PACK/compare_pytorch.py" ]]; then
        step "bench pytorch cuda b128" "$logs/bench-pytorch.log" 120 \
            "$py" "$PACK/compare_pytorch.py" --device cuda --batch 128 --steps 20
        step "bench pytorch cuda tf32" "$logs/bench-pytorch-tf32.log" 60 \
            "$py" "$PACK/compare_pytorch.py" --device cuda --tf32 --batch 128 --steps 20
        step "bench pytorch cuda inference" "$logs/bench-pytorch-inference.log" 60 \
            "$py" "$PACK/compare_pytorch.py" --device cuda --inference --batch 128 --steps 20
    else
        SUMMARY+=("$(printf '%-36s %-8s %s' "bench pytorch cuda b128" "SKIPPED" "compare_pytorch.py not packed")")
    fi

    # --all-reduce nccl over one rank (NCCL refuses two ranks on one card): the trainer's NCCL
    # path bit for bit equal to the plain run (cuda_model's nccl test), then the bench with and
    # without it on the same binary: the step time's difference is what the sums cost on the step.
    local nccl_dir
    if [[ ! -x "$PACK/nccl/bin/alexnet-cli" ]]; then
        SUMMARY+=("$(printf '%-36s %-8s %s' "nccl checks" "SKIPPED" "not packed")")
    elif ! nccl_dir=$(find_lib 'libnccl.so.2*'); then
        SUMMARY+=("$(printf '%-36s %-8s %s' "nccl checks" "SKIPPED" "no libnccl.so.2 on the host")")
    else
        echo "libnccl.so.2 in $nccl_dir"
        local nccl_path="$PWD/$PACK/nccl/lib:$nccl_dir:$LD_LIBRARY_PATH"
        step "nccl: test cuda_model nccl_" "$logs/nccl-test.log" 90 \
            env LD_LIBRARY_PATH="$nccl_path" "$PACK/nccl/bin/cuda_model" --test-threads=1 --nocapture nccl_ </dev/null
        step "nccl: bench cuda b128 (no sums)" "$logs/nccl-bench-plain.log" 60 \
            env LD_LIBRARY_PATH="$nccl_path" "$PACK/nccl/bin/alexnet-cli" bench --device cuda --batch-size 128 --steps 20
        step "nccl: bench cuda --all-reduce nccl" "$logs/nccl-bench.log" 60 \
            env LD_LIBRARY_PATH="$nccl_path" "$PACK/nccl/bin/alexnet-cli" bench --device cuda --all-reduce nccl --batch-size 128 --steps 20
    fi

    {
        echo
        echo "== summary: $card ($(($(date +%s) - START)) s)"
        printf '%s\n' "${SUMMARY[@]}"
    } | tee "$logs/summary.txt"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
