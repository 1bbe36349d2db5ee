#!/usr/bin/env bash
# nDCG@10, MRR@10, Recall@100 and judged@10 of bm25, vector and hybrid on both shared catalogs.
# Usage: bash bench/relevance.sh [DATA_DIR]   (default: ../shared/data beside the repository)
# The first run embeds each catalog (ESCI about 3.5 min, Icecat about 9 min on 2 CPU cores).
set -euo pipefail
data=${1:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}
echo "| catalog | mode | nDCG@10 | MRR@10 | Recall@100 | judged@10 | queries |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for set in esci-us icecat; do
  gains=()
  [ "$set" = esci-us ] && gains=(--esci)
  for mode in bm25 vector hybrid; do
    shoprank eval --catalog "$data/$set/products.jsonl.gz" --queries "$data/$set/queries.tsv" \
      --qrels "$data/$set/qrels.txt" --index "eval-$set" --mode "$mode" "${gains[@]}" --json \
      2>/dev/null |
      python3 -c "import json,sys; r=json.load(sys.stdin); print('| $set | $mode | ' + ' | '.join(str(r[k]) for k in ('nDCG@10','MRR@10','Recall@100','judged@10','queries')) + ' |')"
  done
done
