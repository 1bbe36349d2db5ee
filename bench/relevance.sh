#!/usr/bin/env bash
# Every stage on both shared catalogs, under the full-catalog protocol and (ESCI) the judged-pool
# protocol. The learned stages (tuned fusion, the final stage) are fitted by 5-fold
# cross-validation over the dev queries, so no query is scored by a model that saw it;
# tuned-vector uses the label-free encoder in plugin/artifacts/encoder-<set>. Each stage gets a
# paired-bootstrap 95% CI against default RRF (hybrid, the first stage). Prints Markdown.
# Usage: bash bench/relevance.sh [DATA_DIR]   (default: ../shared/data beside the repository)
# The first run embeds each catalog (texts and titles) twice, with the packaged and the tuned
# encoder: with the packaged one, Icecat took 10 min 13 s on 2 CPU cores, ESCI 8 min 50 s while
# tests shared the cores.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-$(cd "$repo/.." && pwd)/shared/data}
run() {
  local set=$1 protocol=$2; shift 2
  shoprank eval --catalog "$data/$set/products.jsonl.gz" --queries "$data/$set/queries.tsv" \
    --qrels "$data/$set/qrels.txt" --index "eval-$set" --protocol "$protocol" --cv 5 \
    --mode hybrid,bm25,vector,tuned-vector,tuned-hybrid,final --final-ranker none --reranker none \
    --tuned-encoder "$repo/plugin/artifacts/encoder-$set" "$@" 2>/dev/null
  echo
}
run esci-us full --esci
run esci-us pool --esci
run icecat full
