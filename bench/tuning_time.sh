#!/usr/bin/env bash
# Wall time of tuning every stage shoprank ships for one catalog: the label-free encoder
# (`shoprank tune encoder`, the command of plugin/artifacts/encoder-<set>, mining from the
# shop's serving index), the catalog embedded with it (`shoprank reindex`), and the learned
# final stage fitted on that index's candidates for the catalog's dev judgments (`shoprank tune
# ranker`, with its 5-fold CV estimate). The cross-encoder is not among them: no tuned
# cross-encoder ships (see README). Before them the catalog is indexed with the packaged
# encoder, as any shop serving with shoprank already has it; that step is timed on its own
# line and counted in the total from nothing, not in the tuning total.
# Everything is written to a scratch SHOPRANK_HOME that is removed afterwards. Prints Markdown.
# Usage: bash bench/tuning_time.sh [esci-us|icecat] [DATA_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
set=${1:-esci-us}
data=${2:-$(cd "$repo/.." && pwd)/shared/data}
esci=()
[ "$set" = esci-us ] && esci=(--esci)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export SHOPRANK_HOME=$scratch/home HF_HUB_OFFLINE=1
catalog=$data/$set/products.jsonl.gz

rows=()
timed() {
  local label=$1; shift
  local start=$SECONDS
  "$@" > "$scratch/last.log" 2>&1 || { cat "$scratch/last.log" >&2; exit 1; }
  rows+=("| $label | $((SECONDS - start)) |")
}
started=$SECONDS
timed "index with the packaged encoder (serving index; not tuning)" \
  shoprank reindex --catalog "$catalog" --index serving
prerequisite=$((SECONDS - started))
timed "tune encoder (label-free, LoRA)" shoprank tune encoder --catalog "$catalog" \
  --index serving --pseudo-queries 1500 --negatives 1 --epochs 1 --depth 10 --seed 0 --out "$scratch/encoder"
export SHOPRANK_ENCODER_PATH=$scratch/encoder
timed "reindex with it (texts and titles)" shoprank reindex --catalog "$catalog" --index tuning
timed "tune ranker (final stage, with 5-fold CV)" shoprank tune ranker --catalog "$catalog" \
  --queries "$data/$set/queries.tsv" --qrels "$data/$set/qrels.txt" --index tuning \
  "${esci[@]}" --reranker none --seed 0 --out "$scratch/final-ranker.json"
tail -n 1 "$scratch/last.log"

echo
echo "### Tuning every shipped stage on $set ($(nproc) CPU cores)"
echo
echo "| step | seconds |"
echo "| --- | ---: |"
printf '%s\n' "${rows[@]}"
echo "| **tuning total** (the last three) | $((SECONDS - started - prerequisite)) |"
echo "| total from nothing | $((SECONDS - started)) |"
