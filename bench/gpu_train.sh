#!/usr/bin/env bash
# The shipped cross-encoder's recipe trained on one GPU (H100/H200), then served by Triton there
# with the trained weights and measured by bench/triton_gpu.sh. Made for the device machine
# (Python 3.12 with torch, transformers, sentence-transformers and peft; nothing reachable; 64 MiB
# carried; 10 minutes a command), in two calls on the same warm machine, since the fp16 weights
# and the Triton server do not fit in one carry:
#
#   bash bench/gpu_train.sh prepare     # here: fills .gpu (replaces it), about 50 MiB
#   run(command="bash bench/gpu_train.sh", carry=[".gpu"], timeout_s=600)          # there
#   bash bench/triton_gpu.sh prepare    # here: fills .whl
#   run(command="CHECKPOINT=.gpu/out/merged bash bench/triton_gpu.sh", carry=[".whl"],
#       timeout_s=600)                  # there, same warm machine: .gpu/out is still there
#
# `prepare` needs the shipped run's training groups in runs/reranker.work (bash
# bench/train_reranker.sh writes them before it trains) and packs (bench/gpu_train.py): the
# packaged all-MiniLM-L6-v2 with its weights in fp16, those groups, the text of every product
# they name, the shipped model card, and wheels of what the GPU image lacks (pydantic and
# pydantic-settings with their needs). `run` trains with the shipped card's settings on cuda, and
# writes to $OUT (else bench/results): gpu-train.json (pairs/s, seconds, held-out pseudo-query
# MRR beside the shipped CPU run's), the adapter with its model card, and the log; the merged
# checkpoint stays in .gpu/out/merged for the second call. Exits 3 without a GPU, 1 on failures.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PACK=$REPO/.gpu
WHEELS=(
    pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
    typing-extensions==4.16.0 pydantic-settings==2.14.1 python-dotenv==1.2.2
)
PLATFORMS=(
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64
)
LIMIT=$((64 * 1024 * 1024))

fail() {
    local code=$1
    shift
    echo "gpu_train.sh: $*" >&2
    exit "$code"
}

prepare() {
    local tree carried
    python3 -m bench.gpu_train prepare --out "$PACK"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$PACK/wheels" "${WHEELS[@]}"
    tree=$(git ls-files -z --cached --others --exclude-standard | { xargs -0 stat -c %s 2>/dev/null || true; } \
        | awk '{ s += $1 } END { print s + 0 }')
    carried=$(du -sb "$PACK" | cut -f1)
    echo "working tree $((tree / 1024)) KiB + .gpu $((carried / 1024)) KiB =" \
        "$(((tree + carried) / 1024)) KiB of $((LIMIT / 1024)) KiB"
    ((tree + carried < LIMIT)) || fail 1 "over the 64 MiB carry limit"
}

run() {
    local out_dir site name
    out_dir=${OUT:-$REPO/bench/results}
    name=gpu-train-$(date -u +%F)
    mkdir -p "$out_dir"
    exec > >(tee "$out_dir/$name.log") 2>&1
    echo "[$SECONDS s] $(date -u +%FT%TZ) on $(hostname)"
    [[ -f $PACK/texts.jsonl.xz ]] || fail 1 "$PACK is not prepared: run 'bash bench/gpu_train.sh prepare' here, carry .gpu"
    command -v nvidia-smi >/dev/null || fail 3 "no GPU: nvidia-smi is not on PATH"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
        || fail 3 "no GPU: nvidia-smi finds none"
    python3 -c 'import sys, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.is_available())
sys.exit(0 if torch.cuda.is_available() else 1)' || fail 3 "no GPU: torch sees no CUDA device"
    site=$(mktemp -d)/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$PACK"/wheels/*.whl
    python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|sentence-transformers|peft) ' \
        || true
    echo "[$SECONDS s] wheels installed"
    rm -rf "$PACK/out"
    HF_HUB_OFFLINE=1 PYTHONPATH=$site:$REPO python3 -m bench.gpu_train train --data "$PACK" \
        --out "$PACK/out" --device "${DEVICE:-cuda}"
    cp "$PACK/out/gpu-train.json" "$out_dir/$name.json"
    mkdir -p "$out_dir/$name-model"
    cp "$PACK"/out/model/* "$out_dir/$name-model/"
    echo "[$SECONDS s] done; the merged checkpoint for bench/triton_gpu.sh: $PACK/out/merged"
}

case ${1:-run} in
    prepare) prepare ;;
    run) run ;;
    *) fail 2 "usage: bash bench/gpu_train.sh [prepare|run]" ;;
esac
