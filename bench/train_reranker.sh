#!/usr/bin/env bash
# Reproduces the shipped cross-encoder (plugin/artifacts/reranker) from the two shared catalogs:
# no judgment is read. Builds each catalog's evaluation index if missing (ESCI about 4 min,
# Icecat about 10 min on 2 CPU cores), writes the pseudo-queries' training groups, then trains.
# Resumable: run it again after a stop and it goes on from the last checkpoint in OUT.work.
# Usage: bash bench/train_reranker.sh [OUT] [DATA_DIR]   (default OUT: runs/reranker)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-runs/reranker}
data=${2:-$(cd "$repo/.." && pwd)/shared/data}
export HF_HUB_OFFLINE=1
shoprank tune reranker-distill \
  --catalog "$data/esci-us/products.jsonl.gz" --index eval-esci-us \
  --catalog "$data/icecat/products.jsonl.gz" --index eval-icecat \
  --pseudo-queries 4000 --group-size 8 --batch-groups 4 --max-length 64 --epochs 1 \
  --label-weight 0.5 --seed 0 --out "$out"
