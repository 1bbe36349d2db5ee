"""What the fairness post-processors see and return, and how items are built from products.

A post-processor maps the reranked list to a permutation of it (never dropping or adding an
item) and explains every item whose rank changed with a `Move` a merchandiser can read. The
input order is the ranking to correct, so processors take items in input order instead of
re-sorting by score: for the reranker's output that is score order with ties in input order,
and a processor run after another keeps the other's work.

Items are plain `FairnessItem`s so the policies know nothing of products or indexes;
`make_items` builds them from products (mappings or objects) and a protected-group rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from plugin.fairness.metrics import gain_ndcg

#: The group of a product without a value in the group field.
NO_GROUP = "(none)"
#: Where a product's group comes from: a field name, or a function of the product.
GroupKey = str | Callable[[object], object]


@dataclass(frozen=True)
class FairnessItem:
    """One ranked candidate as the post-processors see it.

    ``relevance`` is a judged or estimated gain when one is known; without it the gain is the
    score clipped at 0 (see `gain`). ``protected`` marks the group FA*IR protects.
    """

    id: str
    group: str
    score: float
    protected: bool = False
    relevance: float | None = None

    def __post_init__(self) -> None:
        if self.relevance is not None and not self.relevance >= 0:
            raise ValueError(f"item {self.id!r}: relevance must be >= 0, got {self.relevance}")

    @property
    def gain(self) -> float:
        """What the item is worth to the user: relevance if given, else the score clipped at 0."""
        return self.relevance if self.relevance is not None else max(self.score, 0.0)


@dataclass(frozen=True)
class Move:
    """An item whose rank changed (ranks are 1-based), and why."""

    id: str
    from_rank: int
    to_rank: int
    reason: str


@dataclass(frozen=True)
class FairnessResult:
    """The new order, the moves that made it, and what it cost.

    ``ndcg_loss`` is nDCG@k of the input order minus nDCG@k of the new order, with each item's
    `FairnessItem.gain` as gain (negative if the new order happens to be better).
    ``satisfied`` is False when the constraint could not be met; ``notes`` say why.
    """

    items: tuple[FairnessItem, ...]
    moves: tuple[Move, ...] = ()
    ndcg_loss: float = 0.0
    satisfied: bool = True
    notes: tuple[str, ...] = ()

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]


class FairReordering(Protocol):
    """What every fairness policy does: a ranked list in, a permutation of it out (run by the
    pipeline's `plugin.post_processors.Fairness` step)."""

    def rerank(self, items: Sequence[FairnessItem]) -> FairnessResult: ...


def reordered(
    items: Sequence[FairnessItem],
    order: Sequence[int],
    k: int,
    explain: Callable[[int, int, int], str],
    *,
    satisfied: bool = True,
    notes: Iterable[str] = (),
) -> FairnessResult:
    """The result of putting ``items`` in ``order`` (input indexes), as every post-processor
    returns it; ``explain(index, from_rank, to_rank)`` gives the reason of each item that moved
    and ``k`` the depth of the nDCG cost."""
    moves = tuple(
        Move(items[index].id, index + 1, rank, explain(index, index + 1, rank))
        for rank, index in enumerate(order, start=1)
        if index + 1 != rank
    )
    before = [item.gain for item in items]
    after = [before[index] for index in order]
    return FairnessResult(
        items=tuple(items[index] for index in order),
        moves=moves,
        ndcg_loss=gain_ndcg(before, k) - gain_ndcg(after, k),
        satisfied=satisfied,
        notes=tuple(notes),
    )


# --- building items --------------------------------------------------------------------------


def field_of(product: object, name: str) -> object:
    """A product's field: a key of a mapping, else an attribute (None when missing)."""
    if isinstance(product, Mapping):
        return product.get(name)
    return getattr(product, name, None)


def group_of(product: object, group: GroupKey = "brand") -> str:
    """The product's group: a field name or a function of the product; blank or missing
    values give `NO_GROUP`."""
    value = group(product) if callable(group) else field_of(product, group)
    text = "" if value is None else str(value).strip()
    return text or NO_GROUP


def group_counts(products: Iterable[object], group: GroupKey = "brand") -> dict[str, int]:
    """How many products each group has, e.g. over the catalog for `rare_groups`."""
    return dict(Counter(group_of(product, group) for product in products))


def rare_groups(counts: Mapping[str, int], max_share: float) -> frozenset[str]:
    """The groups holding less than ``max_share`` of the products: "small brands".

    `NO_GROUP` is a group like any other here; leave it out of ``counts`` to never protect it.

    >>> sorted(rare_groups({"acme": 90, "tiny": 6, "solo": 4}, 0.05))
    ['solo']
    """
    total = sum(counts.values())
    if total <= 0:
        return frozenset()
    return frozenset(group for group, count in counts.items() if count / total < max_share)


def make_items(
    products: Sequence[object],
    scores: Sequence[float],
    *,
    protected_groups: Collection[str] = frozenset(),
    group: GroupKey = "brand",
    relevance: Sequence[float] | None = None,
    id_field: str = "id",
) -> list[FairnessItem]:
    """`FairnessItem`s for ranked products (mappings or objects such as
    `indexer.schema.Product`), in rank order.

    ``protected_groups`` is an explicit list of groups or the output of `rare_groups`.
    """
    if len(scores) != len(products) or (relevance is not None and len(relevance) != len(products)):
        raise ValueError("make_items: one score (and relevance, if given) per product")
    items = []
    for index, product in enumerate(products):
        name, product_id = group_of(product, group), str(field_of(product, id_field))
        gain = None if relevance is None else float(relevance[index])
        protected = name in protected_groups
        items.append(FairnessItem(product_id, name, float(scores[index]), protected, gain))
    return items
