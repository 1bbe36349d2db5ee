"""Weak supervision from the catalog itself: pseudo-queries written from product fields.

A shop has far more products than judged queries. Each sampled product yields a short,
shopper-like query built from its own fields, with the product as the positive; negatives are
mined from our own retrieval for that query. No human judgment is read, so a model adapted on
these pairs can be evaluated on every judged query without leaking them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from indexer.analysis import analyze
from indexer.encoder import BiEncoder
from indexer.schema import Product
from indexer.store import VectorStore
from reranker.metrics import Qrels
from reranker.training_data import mine_candidates

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")
#: Words that make a title long without saying what the product is.
_FILLER = frozenset({
    "a", "an", "and", "for", "with", "of", "the", "in", "on", "to", "by", "from", "at", "or", "x",
    "pack", "set", "new", "pcs", "piece", "pieces",
})


@dataclass(frozen=True)
class PseudoQuery:
    """A query written from one product's fields; that product is its positive."""

    text: str
    product_id: str
    kind: str


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _FILLER]


def _descriptive(word: str) -> bool:
    """Not a model code, size or number ("le-26r88bd", "77", "cm"): shoppers type kinds."""
    return len(word) > 2 and not any(ch.isdigit() for ch in word)


def product_kind(product: Product) -> str | None:
    """What the product is, lower case: its leaf category, else a ``product_type`` attribute.
    Products of one kind count as alike."""
    if product.category:
        return product.category[-1].strip().lower() or None
    kind = product.attributes.get("product_type", "").strip().lower()
    return kind or None


def pseudo_queries_for(product: Product, rng: random.Random) -> list[PseudoQuery]:
    """Shopper-like queries for one product: its kind (sometimes with the brand), and
    a few descriptive title words in title order (no brand, no model codes).

    >>> lamp = Product(id="1", title="Tertial work lamp, dark grey", brand="Ikea",
    ...                category=["Home", "Desk lamps"])
    >>> [q.kind for q in pseudo_queries_for(lamp, random.Random(0))]
    ['category', 'title_words']
    """
    queries = []
    brand = set(_words(product.brand or ""))
    leaf = product_kind(product)
    if leaf:
        text = leaf if not brand or rng.random() < 0.7 else f"{' '.join(sorted(brand))} {leaf}"
        queries.append(PseudoQuery(text, product.id, "category"))
    words = [w for w in _words(product.title) if w not in brand and _descriptive(w)]
    if len(words) >= 2:
        picked = sorted(rng.sample(range(len(words)), min(len(words), rng.randint(2, 4))))
        queries.append(PseudoQuery(" ".join(words[i] for i in picked), product.id, "title_words"))
    return queries


def sample_pseudo_queries(
    products: Sequence[Product], count: int, *, seed: int = 0
) -> list[PseudoQuery]:
    """``count`` pseudo-queries from distinct products chosen at random (same for a seed)."""
    rng = random.Random(seed)
    order = list(products)
    rng.shuffle(order)
    queries: list[PseudoQuery] = []
    seen: set[str] = set()
    for product in order:
        options = pseudo_queries_for(product, rng)
        rng.shuffle(options)
        for query in options:
            if query.text not in seen:
                seen.add(query.text)
                queries.append(query)
                break  # one query per product: more products, less redundancy
        if len(queries) >= count:
            break
    return queries


@dataclass(frozen=True)
class PseudoTrainingSet:
    """Pseudo-queries in the shape the tuners take: texts, qrels and mined candidates."""

    queries: dict[str, str]
    qrels: Qrels
    candidates: dict[str, list[str]]


def _alike(query_terms: set[str], source: Product, other: Product) -> bool:
    """Whether ``other`` answers the pseudo-query as well as its source might: same kind, or a
    title holding every query term. Such products are never used as negatives."""
    kind = product_kind(source)
    if kind is not None and product_kind(other) == kind:
        return True
    return query_terms <= set(analyze(other.title))


def pseudo_training_set(
    products: Mapping[str, Product],
    store: VectorStore,
    encoder: BiEncoder,
    count: int,
    *,
    seed: int = 0,
    depth: int = 30,
) -> PseudoTrainingSet:
    """``count`` pseudo-queries with their source product as the one positive (grade 3) and
    candidates from our own retrieval, minus the products alike to the source."""
    pseudo = sample_pseudo_queries(list(products.values()), count, seed=seed)
    queries = {f"pseudo-{i:05d}": query.text for i, query in enumerate(pseudo)}
    mined = mine_candidates(store, encoder, queries, depth)
    candidates = {}
    for qid, query in zip(queries, pseudo, strict=True):
        source = products[query.product_id]
        terms = set(analyze(query.text))
        candidates[qid] = [
            pid for pid in mined[qid]
            if pid == source.id or (pid in products and not _alike(terms, source, products[pid]))
        ]
    qrels = {qid: {query.product_id: 3} for qid, query in zip(queries, pseudo, strict=True)}
    return PseudoTrainingSet(queries, qrels, candidates)
