#!/usr/bin/env bash
# Every retrieval stage on both shared catalogs, under the full-catalog protocol and (ESCI) the
# judged-pool protocol, with paired-bootstrap 95% CIs against BM25. Prints Markdown.
# Usage: bash bench/relevance.sh [DATA_DIR]   (default: ../shared/data beside the repository)
# The first run embeds each catalog (ESCI about 3.5 min, Icecat about 9 min on 2 CPU cores).
set -euo pipefail
data=${1:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
run() {
  local set=$1 protocol=$2; shift 2
  shoprank eval --catalog "$data/$set/products.jsonl.gz" --queries "$data/$set/queries.tsv" \
    --qrels "$data/$set/qrels.txt" --index "eval-$set" --mode bm25,vector,hybrid \
    --protocol "$protocol" "$@" 2>/dev/null
  echo
}
run esci-us full --esci
run esci-us pool --esci
run icecat full
