#!/usr/bin/env bash
# The Triton reranker on one GPU (H100/H200): pairs/s and p50/p95 latency of 100-candidate
# requests at concurrency 1, 8 and 32, in FP32 and FP16, then FP16 with candidate-length buckets
# (one forward pass per bucket) and with the dynamic batcher's queue delay at 0 and 8 ms (the
# config waits 2 ms), judged against the GPU targets (p95 <= 10 ms at concurrency 8; >= 50,000
# pairs/s), with the arithmetic each point sustains as a share of the GPU's datasheet peak. Made for the device machine: Python 3.12
# with torch/transformers/numpy, nothing reachable, 64 MiB carried, 10 minutes a command.
#
#   bash bench/triton_gpu.sh prepare   # here, with network: fills .whl (replaces it)
#   bash bench/triton_gpu.sh           # there: run(command="bash bench/triton_gpu.sh",
#                                      #            carry=[".whl"], timeout_s=600)
#
# `prepare` runs these, from the repository root (network needed; .whl gets 48 MiB, with the
# working tree about 52 MiB of the 64 MiB that travel; it prints the sum):
#   mkdir -p .git/info; grep -qxF /.whl/ .git/info/exclude || echo /.whl/ >>.git/info/exclude
#   # what the GPU image lacks (KINDS.md): tritonclient[http] and its needs, and pydantic for
#   # reranker.triton_export; torch, transformers, numpy, aiohttp, urllib3, certifi are there
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     tritonclient==2.73.0 python-rapidjson==1.25 gevent==26.9.0 greenlet==3.3.2 \
#     zope.event==6.2 zope.interface==8.7 geventhttpclient==2.6.1 brotli==1.2.1 \
#     pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 \
#     typing-extensions==4.16.0
#   # the server: the wheel scripts/triton uses (taken from .cache/triton/wheel when there),
#   # cut by slim_server (below) to what scripts/triton unpacks for Python 3.12: 55 -> 39 MB
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_35_x86_64 -d /tmp/pytriton nvidia-pytriton==0.7.0
#   slim_server /tmp/pytriton/nvidia_pytriton-0.7.0-*.whl .whl/tritonserver/<same name>
#   # the requests: 48 real queries x 100 demo products, tokenized once at max_length 256
#   python3 -m bench.triton_load prepare --out .whl/requests --requests 48 --candidates 100 \
#     --max-length 256
#
# On the GPU machine it installs the wheels into a temporary folder, unpacks the server with
# `scripts/triton install`, exports one full checkpoint (random weights in the packaged
# all-MiniLM-L6-v2 architecture: the packaged weights, 88 MB, do not fit beside the server in
# 64 MiB; same shapes, so the same speed) into a temporary repository, starts Triton with
# `scripts/triton start --gpu` (configs/gpu.pbtxt: KIND_GPU, fp16) on ports 18300-18302, and runs
# bench/triton_load.py: for each of VARIANTS the model is reloaded with a load-time config
# override (its `precision` and `length_buckets` parameters, the batcher's queue delay; no
# restart), then each concurrency is measured for a fixed time after a warm-up. Every row is
# printed to the log as it is measured, so a run cut short still reports what it measured. curl and unzip, which scripts/triton calls, get Python stand-ins
# where the image lacks them. Results go to $OUT (the device tool brings them back), else
# bench/results: triton-gpu-<date>.{json,md}, the run's log and Triton's log.
# With CHECKPOINT=DIR (a full checkpoint: bench/gpu_train.sh leaves the model it trained in
# .gpu/out/merged) that model is exported instead of random weights.
# Exits 3 without a GPU, 4 when the server cannot run there, 1 on other failures.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
WHEELS=$REPO/.whl
PORT=18300
SECONDS_PER_POINT=${SECONDS_PER_POINT:-6}
# What the model is reloaded as, in turn (bench/triton_load.py `Variant`).
VARIANTS=(fp32 fp16 fp16+buckets=64,128,192 fp16+delay=0 fp16+delay=8000)
BUDGET=570  # seconds for the whole run, under the device's 600
CLIENT_WHEELS=(
    tritonclient==2.73.0 python-rapidjson==1.25 gevent==26.9.0 greenlet==3.3.2 zope.event==6.2
    zope.interface==8.7 geventhttpclient==2.6.1 brotli==1.2.1 pydantic==2.13.4
    pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
    typing-extensions==4.16.0
)
PLATFORMS=(
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64
)
LIMIT=$((64 * 1024 * 1024))

fail() {
    local code=$1
    shift
    echo "triton_gpu.sh: $*" >&2
    exit "$code"
}

# Only what scripts/triton unpacks: server, libraries (not the bundled libpython), backends,
# and the Python 3.12 stub. A zip named like the wheel, so scripts/triton takes it as one.
slim_server() {
    python3 - "$1" "$2" <<'EOF'
import sys
import zipfile

keep = ("pytriton/tritonserver/bin/", "pytriton/tritonserver/backends/",
        "pytriton/tritonserver/python_backend_stubs/3.12/", "nvidia_pytriton.libs/")
with zipfile.ZipFile(sys.argv[1]) as full, zipfile.ZipFile(sys.argv[2], "w") as slim:
    for info in full.infolist():
        name = info.filename
        if name.startswith(keep) and not name.startswith("nvidia_pytriton.libs/libpython"):
            slim.writestr(info, full.read(name))
EOF
}

# scripts/triton polls readiness with curl and unpacks the server with unzip; a bare CUDA image
# may have neither. These Python stand-ins do exactly the calls it makes.
write_curl() {  # curl [-fsS | -s] --max-time N -o /dev/null URL
    cat >"$1" <<'EOF'
#!/usr/bin/env python3
import sys
import urllib.error
import urllib.request

args = sys.argv[1:]
timeout = float(args[args.index("--max-time") + 1]) if "--max-time" in args else 30.0
fail = any(a.startswith("-") and not a.startswith("--") and "f" in a for a in args)
try:
    urllib.request.urlopen(args[-1], timeout=timeout).read()
except urllib.error.HTTPError:
    sys.exit(22 if fail else 0)
except OSError:
    sys.exit(7)
EOF
    chmod +x "$1"
}

write_unzip() {  # unzip -q ARCHIVE -d DIR PATTERN... [-x PATTERN...]
    cat >"$1" <<'EOF'
#!/usr/bin/env python3
import fnmatch
import sys
import zipfile

args = [a for a in sys.argv[1:] if a != "-q"]
archive = args.pop(0)
at = args.index("-d")
target = args[at + 1]
del args[at : at + 2]
exclude: list[str] = []
if "-x" in args:
    at = args.index("-x")
    args, exclude = args[:at], args[at + 1 :]
with zipfile.ZipFile(archive) as zipped:
    names = [n for n in zipped.namelist()
             if (not args or any(fnmatch.fnmatch(n, p) for p in args))
             and not any(fnmatch.fnmatch(n, p) for p in exclude)]
    if not names:
        sys.exit(11)
    for name in names:
        zipped.extract(name, target)
EOF
    chmod +x "$1"
}

stand_ins() {
    mkdir -p "$1"
    command -v curl >/dev/null || { write_curl "$1/curl"; echo "curl: Python stand-in"; }
    command -v unzip >/dev/null || { write_unzip "$1/unzip"; echo "unzip: Python stand-in"; }
    PATH=$1:$PATH
}

travelling_bytes() {
    git ls-files -z --cached --others --exclude-standard | { xargs -0 stat -c %s 2>/dev/null || true; } \
        | awk '{ s += $1 } END { print s + 0 }'
}

prepare() {
    local full tree carried
    mkdir -p .git/info
    grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS/tritonserver"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$WHEELS" "${CLIENT_WHEELS[@]}"
    full=$(find .cache/triton/wheel -name 'nvidia_pytriton-0.7.0-*.whl' 2>/dev/null | head -n 1)
    if [[ -z $full ]]; then
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_35_x86_64 -d "$scratch" \
            nvidia-pytriton==0.7.0
        full=$(find "$scratch" -name 'nvidia_pytriton-0.7.0-*.whl' | head -n 1)
    fi
    slim_server "$full" "$WHEELS/tritonserver/$(basename "$full")"
    python3 -m bench.triton_load prepare --out "$WHEELS/requests" --requests 48 \
        --candidates 100 --max-length 256
    tree=$(travelling_bytes)
    carried=$(du -sb "$WHEELS" | cut -f1)
    echo "working tree $((tree / 1024)) KiB + .whl $((carried / 1024)) KiB =" \
        "$(((tree + carried) / 1024)) KiB of $((LIMIT / 1024)) KiB"
    ((tree + carried < LIMIT)) || fail 1 "over the 64 MiB carry limit"
}

# Globals, not locals: the EXIT trap reads them after run() has returned.
stop_server() {
    scripts/triton stop || true
    cp "$home/triton.log" "$out_dir/$name-triton.log" || true
    rm -rf "$scratch"
}

run() {
    local site server libdir missing
    out_dir=${OUT:-$REPO/bench/results}
    name=triton-gpu-$(date -u +%F)
    mkdir -p "$out_dir"
    exec > >(tee "$out_dir/$name.log") 2>&1
    echo "[$SECONDS s] $(date -u +%FT%TZ) on $(hostname)"

    command -v nvidia-smi >/dev/null || fail 3 "no GPU: nvidia-smi is not on PATH"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
        || fail 3 "no GPU: nvidia-smi finds none"
    python3 -c 'import sys, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.is_available())
sys.exit(0 if torch.cuda.is_available() else 1)' || fail 3 "no GPU: torch sees no CUDA device"

    if [[ ! -f $WHEELS/requests/requests.npz ]] \
        || ! compgen -G "$WHEELS/tritonserver/*.whl" >/dev/null; then
        fail 1 "$WHEELS is not prepared: run 'bash bench/triton_gpu.sh prepare' here, carry .whl"
    fi
    scratch=$(mktemp -d)
    site=$scratch/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$WHEELS"/*.whl
    echo "[$SECONDS s] wheels installed"

    stand_ins "$scratch/bin"
    home=$scratch/home
    mkdir -p "$home/wheel"
    cp "$WHEELS"/tritonserver/*.whl "$home/wheel/"
    export SHOPRANK_TRITON_HOME=$home SHOPRANK_TRITON_HTTP_PORT=$PORT
    export SHOPRANK_TRITON_GRPC_PORT=$((PORT + 1)) SHOPRANK_TRITON_METRICS_PORT=$((PORT + 2))
    export SHOPRANK_TRITON_START_TIMEOUT=240
    scripts/triton install || fail 4 "cannot unpack the Triton server"
    # The Python backend's stub links this Python's libpython3.12 by name (see
    # shared/notes/triton-local.md); say so now rather than as a failed model load later.
    server=$(find "$home" -maxdepth 1 -type d -name 'tritonserver-*' | head -n 1)
    libdir=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
    missing=$(LD_LIBRARY_PATH=$libdir ldd "$server/pytriton/tritonserver/bin/tritonserver" \
        "$server/pytriton/tritonserver/backends/python/triton_python_backend_stub" \
        | grep 'not found' || true)
    [[ -z $missing ]] || fail 4 "Triton's binaries miss libraries (LIBDIR $libdir): $missing"
    # The Python backend talks to its model process through shared memory.
    [[ -d /dev/shm && -w /dev/shm ]] || fail 4 "no writable /dev/shm for Triton's Python backend"
    df -h /dev/shm | tail -n 1 || true

    if [[ -n ${CHECKPOINT:-} ]]; then  # a trained model (bench/gpu_train.sh), else random weights
        [[ -f $CHECKPOINT/config.json ]] || fail 1 "CHECKPOINT=$CHECKPOINT holds no config.json"
        PYTHONPATH=$site:$REPO python3 -m bench.triton_load repository "$scratch/models" \
            --checkpoint "$CHECKPOINT"
        described="the cross-encoder trained on this GPU by bench/gpu_train.sh ($CHECKPOINT)"
    else
        PYTHONPATH=$site:$REPO python3 -m bench.triton_load repository "$scratch/models" \
            --random-weights "$WHEELS/requests/config.json"
        described="full checkpoint: random weights in the packaged all-MiniLM-L6-v2 \
architecture, 1-logit head"
    fi
    trap stop_server EXIT
    scripts/triton start --gpu --repository "$scratch/models" || fail 4 "Triton did not start"
    echo "[$SECONDS s] Triton ready"

    # Stopped in time for the EXIT trap to save Triton's log within the 10-minute command.
    PYTHONPATH=$site:$REPO timeout $((BUDGET - SECONDS)) python3 -m bench.triton_load run \
        --url "127.0.0.1:$PORT" \
        --inputs "$WHEELS/requests" --concurrency 1 8 32 --seconds "$SECONDS_PER_POINT" \
        --warmup 20 --precision "${VARIANTS[@]}" --targets --out "$out_dir" --name "$name" \
        --model "shoprank_reranker v1 ($described); Python backend, configs/gpu.pbtxt, each \
variant loaded by a load-time config override"
    echo "[$SECONDS s] done"
}

case ${1:-run} in
    prepare) prepare ;;
    run) run ;;
    *) fail 2 "usage: bash bench/triton_gpu.sh [prepare|run]" ;;
esac
