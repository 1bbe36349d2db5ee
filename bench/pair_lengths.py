"""How many tokens a cross-encoder pair needs: the query, plus the product's title, brand and
category, plus its first attributes, plus the whole product text the pipeline sends.

    python3 -m bench.pair_lengths [--data ../shared/data] [--sample 1000]

Prints the p50 / p90 / p95 token counts (MiniLM's WordPiece, special tokens excluded) of each
part on each shared catalog: the measurement behind the cross-encoder's max length.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.machine import percentile
from indexer.catalog import load_catalog
from indexer.schema import Product, product_to_text
from reranker.metrics import load_queries

REPO = Path(__file__).resolve().parents[1]


def head(product: Product) -> str:
    """Title, brand and category path, as `product_to_text` begins."""
    parts = [product.title]
    if product.brand:
        parts.append(f"brand: {product.brand}")
    if product.category:
        parts.append("category: " + " > ".join(product.category))
    return " | ".join(parts)


def head_and_attributes(product: Product, count: int = 3) -> str:
    attributes = list(product.attributes.items())[:count]
    if not attributes:
        return head(product)
    listed = "; ".join(f"{key.replace('_', ' ')}: {value}" for key, value in attributes)
    return f"{head(product)} | {listed}"


def quantiles(lengths: Sequence[int]) -> str:
    values = [float(n) for n in lengths]
    return " / ".join(f"{percentile(values, p):.0f}" for p in (50, 90, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sample", type=int, default=1000)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from indexer.model_files import packaged_model_path
    from indexer.model_loading import prepare_offline_loading

    prepare_offline_loading()
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_path()))

    def tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])

    parts: list[tuple[str, Callable[[Product], str]]] = [
        ("title + brand + category", head),
        ("... + 3 attributes", head_and_attributes),
        ("whole product text", product_to_text),
    ]
    print("| catalog | part | tokens p50 / p90 / p95 |\n| --- | --- | --- |")
    for name in ("esci-us", "icecat"):
        folder = args.data / name
        queries = list(load_queries(folder / "queries.tsv").values())
        products = load_catalog(folder / "products.jsonl.gz").products
        sample = random.Random(0).sample(products, min(args.sample, len(products)))
        print(f"| {name} | query | {quantiles([tokens(q) for q in queries])} |")
        for label, render in parts:
            print(f"| {name} | {label} | {quantiles([tokens(render(p)) for p in sample])} |")
    print("\nA pair adds 3 special tokens ([CLS] query [SEP] product [SEP]).")


if __name__ == "__main__":
    main()
