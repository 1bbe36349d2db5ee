"""The fairness step of a search: a request's `FairnessPolicy` applied to the ranked items.

This is what the search pipeline calls. The post-processors themselves live in
`plugin.fairness.policies` and `plugin.fairness.amortized`; this module builds one from a
policy, hands it the ranked items, and returns them in the new order with each move's reason.
Groups come from a product field (brand by default, or the top-level category). The protected
groups are the policy's explicit list, or, by rule, the brands holding less than a share of
the catalog (the store's `brand_counts`); for top-level categories the share is over the
query's candidates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from indexer.analysis import analyze
from indexer.schema import Product
from plugin.fairness.amortized import AmortizedExposure
from plugin.fairness.exposure_store import ExposureStore
from plugin.fairness.items import (
    NO_GROUP,
    FairnessItem,
    FairnessResult,
    FairReordering,
    GroupKey,
    Move,
    field_of,
    group_counts,
    group_of,
    rare_groups,
)
from plugin.fairness.policies import ExposureParity, FairTopK, GroupCap
from plugin.models import FairnessPolicy, FairnessSummary


@dataclass(frozen=True)
class FairnessOutcome:
    order: list[int]  # indices into the input, in the new order
    moves: dict[int, Move]  # by input index
    summary: FairnessSummary


def _top_category(product: object) -> object:
    path = field_of(product, "category")
    return path[0] if isinstance(path, list) and path else None


def group_key(policy: FairnessPolicy) -> GroupKey:
    """Where the policy's groups come from: a product field, or the top-level category."""
    return _top_category if policy.field == "category" else policy.field


def relevance_of(scores: Sequence[float]) -> list[float]:
    """Relevance for the nDCG cost and exposure targets: each score over the best one when no
    score is negative (retrieval and cross-encoder scores), else min-max scaled to 0..1 (a
    linear final stage's scores), so a gain keeps its ratio to the best where it has one."""
    high = max(scores, default=0.0)
    low = 0.0 if min(scores, default=0.0) >= 0 else min(scores)
    span = high - low
    return [(score - low) / span if span > 0 else 1.0 for score in scores]


def protected_groups(
    policy: FairnessPolicy,
    products: Sequence[Product],
    catalog: Mapping[str, int] | None = None,
) -> frozenset[str]:
    """The protected groups, case-folded (names match as brand filters do: in any case).

    By rule, a group's share is over ``catalog`` (products per lower-cased brand, from
    `VectorStore.brand_counts`) when given and the groups are brands, else over ``products``;
    products without a group are never protected by the rule.
    """
    if policy.protected is not None:
        return frozenset(name.casefold() for name in policy.protected)
    share = policy.protected_share_below
    if share is None:
        return frozenset()
    if catalog is not None and policy.field == "brand":
        counts = {name or NO_GROUP: count for name, count in catalog.items()}
    else:
        counts = group_counts(products, group_key(policy))
    return frozenset(name.casefold() for name in rare_groups(counts, share) - {NO_GROUP})


def named_group(query: str, groups: Iterable[str]) -> str | None:
    """The first of ``groups`` whose every word (as BM25 analyses it) is in ``query``."""
    terms = set(analyze(query))
    for group in groups:
        words = analyze(group)
        if words and set(words) <= terms:
            return group
    return None


def post_processor(
    policy: FairnessPolicy, k: int, store: ExposureStore | None = None
) -> FairReordering:
    top = policy.k or k
    if policy.policy == "amortized":
        if store is None:
            raise ValueError("policy amortized needs an exposure store")
        key = f"{policy.field}:{policy.max_ndcg_loss}"
        return AmortizedExposure(
            store, key=key, k=top, depth=max(2 * top, 20), max_ndcg_loss=policy.max_ndcg_loss,
            group_label=policy.field,
        )
    if policy.policy == "fair_topk":
        return FairTopK(k=top, p=policy.p, alpha=policy.alpha)
    if policy.policy == "group_cap":
        return GroupCap(cap=policy.cap, k=top, group_label=policy.field)
    return ExposureParity(k=top, tolerance=policy.tolerance, group_label=policy.field)


def apply_fairness(
    policy: FairnessPolicy,
    products: Sequence[Product],
    scores: Sequence[float],
    k: int,
    store: ExposureStore | None = None,
    query: str | None = None,
    catalog: Mapping[str, int] | None = None,
) -> FairnessOutcome:
    """Reorder ``products`` (ranked, with the scores that ranked them) under ``policy``.

    ``amortized`` reads the exposure ``store`` and records the order it returns there. With
    ``query``, a query that names a group of the top k is exempt (`named_group`). ``catalog``
    gives the rule-based protection its catalog shares (`protected_groups`).

    Relevance comes from `relevance_of`.
    """
    key = group_key(policy)
    protected = protected_groups(policy, products, catalog)
    items = []
    for index, (product, score, relevance) in enumerate(
        zip(products, scores, relevance_of(scores), strict=True)
    ):
        group = group_of(product, key)
        items.append(
            FairnessItem(str(index), group, score, group.casefold() in protected, relevance)
        )
    processor = post_processor(policy, k, store)
    top = policy.k or k
    named = (
        named_group(query, dict.fromkeys(item.group for item in items[:top]))
        if policy.exempt_named_groups and query
        else None
    )
    if named is not None:
        result = FairnessResult(
            tuple(items), notes=(f"the query names {policy.field} {named!r}: left as ranked",)
        )
    else:
        result = processor.rerank(items)
    if isinstance(processor, AmortizedExposure):
        processor.record(result.items)
    moves = {int(move.id): move for move in result.moves}
    summary = FairnessSummary(
        policy=policy.policy, moved=len(moves),
        protected_groups=sorted({item.group for item in items if item.protected}),
        satisfied=result.satisfied, ndcg_loss=round(result.ndcg_loss, 6),
        notes=list(result.notes),
    )
    return FairnessOutcome([int(i) for i in result.ids], moves, summary)
