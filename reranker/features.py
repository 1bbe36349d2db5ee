"""Cheap per-candidate features for the learned final stage.

Every feature is computed from what the pipeline already holds for a query: the retrieval
scores and ranks of each candidate and the product record. Nothing here reads the index, so the
features are the same on every store. Scores are made comparable across queries by relating
them to the other candidates of the same query (a BM25 of 12 means little on its own).
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from indexer.analysis import analyze, tokens
from indexer.retrieval import Candidate
from indexer.schema import Product

#: The columns of `candidate_features`, in order.
FEATURE_NAMES: tuple[str, ...] = (
    "bm25_relative",  # BM25 / best BM25 of the query's candidates
    "bm25_log",  # log(1 + BM25): how strong the lexical match is at all
    "bm25_rank",  # 1 / log2(1 + rank) in the BM25 list, 0 when BM25 did not retrieve it
    "vector_cosine",  # cosine with the query embedding
    "vector_gap",  # cosine minus the best cosine of the query's candidates
    "vector_rank",  # 1 / log2(1 + rank) in the vector list, 0 when not retrieved
    "rrf",  # reciprocal rank fusion score x 60
    "title_coverage",  # share of query terms found in the title
    "title_all_terms",  # 1 when every query term is in the title
    "title_bigrams",  # share of the query's adjacent term pairs found adjacent in the title
    "text_coverage",  # share of query terms found anywhere in the product text
    "brand_in_query",  # 1 when the product's brand is named in the query
    "category_coverage",  # share of query terms found in the category path
    "attribute_coverage",  # share of query terms found in the attribute values
    "rating",  # rating / 5, 0 when missing
    "rating_count_log",  # log(1 + number of ratings)
    "price_relative_log",  # log price minus the median log price of the candidates, 0 if none
    "title_length_log",  # log(1 + title terms)
    "negated_in_title",  # 1 when the title has a term the query excludes ("without straw")
    "negated_in_text",  # share of the excluded terms found anywhere in the product text
)

#: Words after which a shopper names what the product must not have.
_NEGATIONS = frozenset({"without", "no", "not", "minus", "except"})
_NEGATION = re.compile(r"(?<![\w-])(?:" + "|".join(sorted(_NEGATIONS)) + r")\s+")
#: Words that end a negated phrase ("without lid with handle").
_PHRASE_ENDS = frozenset({"with", "and", "for", "but", "or", "in", "on"})

#: Fusion constant the ``rrf`` feature uses (the retrieval default).
_RRF_K = 60


def _inverse_log_rank(rank: int | None) -> float:
    return 0.0 if rank is None else 1.0 / math.log2(1 + rank)


def _coverage(terms: Sequence[str], field: frozenset[str] | set[str]) -> float:
    return sum(term in field for term in terms) / len(terms) if terms else 0.0


def _bigram_coverage(terms: Sequence[str], field_terms: Sequence[str]) -> float:
    pairs = list(itertools.pairwise(terms))
    if not pairs:
        return 0.0
    field_pairs = set(itertools.pairwise(field_terms))
    return sum(pair in field_pairs for pair in pairs) / len(pairs)


def negated_terms(query: str) -> set[str]:
    """Terms the query excludes: the first content word after a free-standing negation word
    ("no-show socks" and "non-slip mat" negate nothing).

    >>> sorted(negated_terms("water bottle without straw, with handle"))
    ['straw']
    """
    negated: set[str] = set()
    for match in _NEGATION.finditer(query.lower()):
        for following in tokens(query.lower()[match.end():])[:3]:
            if following in _PHRASE_ENDS or following in _NEGATIONS:
                break
            terms = analyze(following)
            if terms:
                negated.update(terms)
                break
    return negated


@dataclass(frozen=True)
class ProductTerms:
    """A product's analysed fields, as the features read them."""

    title_terms: tuple[str, ...]
    title: frozenset[str]
    brand: tuple[str, ...]
    category: frozenset[str]
    attributes: frozenset[str]
    everything: frozenset[str]


def product_terms(product: Product) -> ProductTerms:
    """Analysing a long description costs more than the rest of the features together, and the
    same products come back query after query: results are cached by field content, so a
    changed product is analysed afresh."""
    return _terms(
        product.title, product.brand or "", tuple(product.category),
        tuple(product.attributes.values()), tuple(product.bullet_points), product.description,
    )


@functools.lru_cache(maxsize=65_536)
def _terms(
    title: str,
    brand: str,
    category: tuple[str, ...],
    attributes: tuple[str, ...],
    bullets: tuple[str, ...],
    description: str,
) -> ProductTerms:
    title_terms = tuple(analyze(title))
    brand_terms = tuple(analyze(brand))
    category_terms = frozenset(analyze(" ".join(category)))
    attribute_terms = frozenset(analyze(" ".join(attributes)))
    everything = frozenset(title_terms) | category_terms | attribute_terms | set(brand_terms)
    everything |= set(analyze(" ".join(bullets))) | set(analyze(description))
    return ProductTerms(
        title_terms, frozenset(title_terms), brand_terms, category_terms, attribute_terms,
        everything,
    )


def _filled(values: Sequence[float | None]) -> list[float]:
    """Scores with the missing ones set to the lowest seen: a list cut-off bounds them above."""
    seen = [v for v in values if v is not None]
    floor = min(seen) if seen else 0.0
    return [floor if v is None else v for v in values]


def candidate_features(
    query: str, candidates: Sequence[Candidate], products: Mapping[str, Product]
) -> npt.NDArray[np.float64]:
    """An ``(n, len(FEATURE_NAMES))`` matrix, one row per candidate, in candidate order.

    >>> rows = candidate_features("desk lamp", candidates, products)
    >>> dict(zip(FEATURE_NAMES, rows[0]))["title_coverage"]
    1.0
    """
    excluded = negated_terms(query)
    terms = [term for term in analyze(query) if term not in excluded]
    query_terms = set(terms)
    bm25 = _filled([c.bm25 for c in candidates])
    cosine = _filled([c.vector for c in candidates])
    best_bm25 = max(bm25, default=0.0)
    best_cosine = max(cosine, default=0.0)
    prices = [products[c.product_id].price for c in candidates]
    log_prices = [math.log1p(p) for p in prices if p]
    median_log_price = float(np.median(log_prices)) if log_prices else 0.0
    rows = []
    for candidate, lexical, semantic, price in zip(candidates, bm25, cosine, prices, strict=True):
        product = products[candidate.product_id]
        fields = product_terms(product)
        title_terms, title, brand_terms = fields.title_terms, fields.title, fields.brand
        category, attributes, everything = fields.category, fields.attributes, fields.everything
        rrf = sum(
            1.0 / (_RRF_K + rank)
            for rank in (candidate.bm25_rank, candidate.vector_rank)
            if rank is not None
        )
        rows.append(
            [
                lexical / best_bm25 if best_bm25 > 0 else 0.0,
                math.log1p(max(lexical, 0.0)),
                _inverse_log_rank(candidate.bm25_rank),
                semantic,
                semantic - best_cosine,
                _inverse_log_rank(candidate.vector_rank),
                rrf * _RRF_K,
                _coverage(terms, title),
                float(bool(terms) and query_terms <= title),
                _bigram_coverage(terms, title_terms),
                _coverage(terms, everything),
                float(bool(brand_terms) and set(brand_terms) <= query_terms),
                _coverage(terms, category),
                _coverage(terms, attributes),
                (product.rating or 0.0) / 5.0,
                math.log1p(product.rating_count or 0),
                math.log1p(price) - median_log_price if price else 0.0,
                math.log1p(len(title_terms)),
                float(bool(excluded & title)),
                len(excluded & everything) / len(excluded) if excluded else 0.0,
            ]
        )
    return np.asarray(rows, dtype=np.float64).reshape(len(candidates), len(FEATURE_NAMES))


#: Pseudo-relevance feedback: how much a candidate resembles the head of the retrieval list.
#: Shoppers' queries are short and ambiguous; the first few fused results usually settle
#: what kind of product is meant, and a candidate unlike all of them is seldom what was wanted.
FEEDBACK_FEATURES: tuple[str, ...] = (
    "feedback_cosine",  # cosine of the product's embedding with the centroid of the head's
    "feedback_title_overlap",  # mean share of its title terms found in each head title
)

#: How many candidates, in retrieval order, form the head that feedback compares with.
FEEDBACK_DEPTH = 5

#: How well the title alone matches the query in embedding space. A product text also says
#: what the product fits, holds or comes with; its title says what it is.
TITLE_FEATURES: tuple[str, ...] = (
    "title_cosine",  # cosine of the query embedding with the product's title embedding
)

#: The optional column a final stage can add: the cross-encoder's score.
CROSS_ENCODER_FEATURE = "cross_encoder"

#: The feature sets a final stage may use, in column order.
KNOWN_FEATURE_SETS: tuple[tuple[str, ...], ...] = (
    FEATURE_NAMES,
    (*FEATURE_NAMES, CROSS_ENCODER_FEATURE),
    (*FEATURE_NAMES, *FEEDBACK_FEATURES),
    (*FEATURE_NAMES, *FEEDBACK_FEATURES, CROSS_ENCODER_FEATURE),
    (*FEATURE_NAMES, *FEEDBACK_FEATURES, *TITLE_FEATURES),
    (*FEATURE_NAMES, *FEEDBACK_FEATURES, *TITLE_FEATURES, CROSS_ENCODER_FEATURE),
)

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Embeddings:
    """The embeddings some features read: the query's, and the candidates' stored text and
    title embeddings by product id (see `needs_embeddings`)."""

    query: Vector | None = None
    texts: Mapping[str, Vector] = field(default_factory=dict)
    titles: Mapping[str, Vector] = field(default_factory=dict)


def feedback_features(
    candidates: Sequence[Candidate],
    products: Mapping[str, Product],
    vectors: Mapping[str, npt.NDArray[np.float32]],
) -> npt.NDArray[np.float64]:
    """An ``(n, len(FEEDBACK_FEATURES))`` matrix for candidates in retrieval order.

    The head is the first `FEEDBACK_DEPTH` candidates (a head product is compared with the head
    it belongs to). A candidate without a stored embedding gets cosine 0.

    >>> rows = feedback_features(candidates, products, vectors)
    >>> dict(zip(FEEDBACK_FEATURES, rows[0]))["feedback_title_overlap"]
    1.0
    """
    head = candidates[:FEEDBACK_DEPTH]
    head_titles = [set(product_terms(products[c.product_id]).title_terms) for c in head]
    head_vectors = [vectors[c.product_id] for c in head if c.product_id in vectors]
    centroid = np.mean(head_vectors, axis=0) if head_vectors else None
    if centroid is not None and float(np.linalg.norm(centroid)) > 0:
        centroid = centroid / np.linalg.norm(centroid)
    rows = []
    for candidate in candidates:
        title = set(product_terms(products[candidate.product_id]).title_terms)
        overlap = (
            sum(len(title & other) for other in head_titles) / (len(head_titles) * len(title))
            if title and head_titles
            else 0.0
        )
        vector = vectors.get(candidate.product_id)
        cosine = 0.0 if vector is None or centroid is None else float(vector @ centroid)
        rows.append([cosine, overlap])
    return np.asarray(rows, dtype=np.float64).reshape(len(candidates), len(FEEDBACK_FEATURES))


def title_features(
    candidates: Sequence[Candidate], embeddings: Embeddings
) -> npt.NDArray[np.float64]:
    """An ``(n, len(TITLE_FEATURES))`` matrix. A candidate without a stored title embedding (an
    index written before they were stored) gets its text cosine instead.

    >>> title_features(candidates, Embeddings(query_vector, titles=stored_titles)).shape
    (3, 1)
    """
    if embeddings.query is None:
        raise ValueError("title features need the query embedding")
    text_cosines = _filled([c.vector for c in candidates])
    rows = []
    for candidate, text_cosine in zip(candidates, text_cosines, strict=True):
        title = embeddings.titles.get(candidate.product_id)
        rows.append([text_cosine if title is None else float(title @ embeddings.query)])
    return np.asarray(rows, dtype=np.float64).reshape(len(candidates), len(TITLE_FEATURES))


#: Cross-encoder scores are sigmoids; their logits are kept within this bound.
_MAX_LOGIT = 15.0


def score_logits(scores: Sequence[float]) -> npt.NDArray[np.float64]:
    """The cross-encoder's logits from its sigmoid scores, so that a linear final stage sees
    the differences among low scores too (a sigmoid squeezes them towards 0).

    >>> score_logits([0.5, 0.75]).round(4).tolist()
    [0.0, 1.0986]
    """
    eps = 1.0 / (1.0 + math.exp(_MAX_LOGIT))
    clipped = np.clip(np.asarray(scores, dtype=np.float64), eps, 1.0 - eps)
    return np.log(clipped) - np.log1p(-clipped)


def needs_embeddings(feature_names: Sequence[str]) -> tuple[bool, bool]:
    """Whether a final stage with these features reads the candidates' stored text embeddings,
    and whether it reads their title embeddings."""
    return FEEDBACK_FEATURES[0] in feature_names, TITLE_FEATURES[0] in feature_names


def stage_features(
    query: str,
    candidates: Sequence[Candidate],
    products: Mapping[str, Product],
    rerank_scores: Sequence[float | None],
    feature_names: Sequence[str],
    embeddings: Embeddings | None = None,
) -> npt.NDArray[np.float64]:
    """The feature matrix a final stage with ``feature_names`` expects.

    ``candidates`` come in retrieval order (the feedback features read the head of it).
    ``rerank_scores`` holds the cross-encoder score of each candidate, None outside the rerank
    window; those get the lowest score of the window, as a cut-off bounds them above.
    ``embeddings`` holds what `FEEDBACK_FEATURES` and `TITLE_FEATURES` read.
    """
    names = tuple(feature_names)
    if names not in KNOWN_FEATURE_SETS:
        raise ValueError(
            f"unknown final-stage features {names}; this version computes {FEATURE_NAMES} "
            f"(+ {FEEDBACK_FEATURES} (+ {TITLE_FEATURES})) (+ {CROSS_ENCODER_FEATURE!r})"
        )
    columns = [candidate_features(query, candidates, products)]
    feedback, title = needs_embeddings(names)
    if feedback or title:
        if embeddings is None:
            raise ValueError("this final stage needs the candidates' stored embeddings")
        if feedback:
            columns.append(feedback_features(candidates, products, embeddings.texts))
        if title:
            columns.append(title_features(candidates, embeddings))
    if CROSS_ENCODER_FEATURE in names:
        if all(score is None for score in rerank_scores):
            raise ValueError("this final stage needs cross-encoder scores, and none were computed")
        columns.append(score_logits(_filled(list(rerank_scores)))[:, None])
    return np.hstack(columns)
