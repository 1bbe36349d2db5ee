"""Fairness post-processors: fair exposure for brands and sellers after the reranker.

A post-processor maps the reranked list to a permutation of it (never dropping or adding an
item) and explains every item whose rank changed with a `Move` a merchandiser can read. The
input order is the ranking to correct, so processors take items in input order instead of
re-sorting by score: for the reranker's output that is score order with ties in input order,
and a processor run after another keeps the other's work.

The processors: `FairTopK` (FA*IR, a minimum of protected items in every prefix of the top
k), `ExposureParity` (group exposure follows a target share), `GroupCap` (at most n items per
group in the top k) and `AmortizedExposure` (equity of attention across queries, its state
in an `ExposureStore`).

Items are plain `FairnessItem`s so the module knows nothing of products or indexes;
`make_items` builds them from products (mappings or objects) and a protected-group rule.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from reranker.fairness_metrics import (
    MAX_TABLE_K,
    ExposureTotals,
    amortized_unfairness,
    discounts,
    fair_table,
    gain_ndcg,
    sum_totals,
)

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


class PostProcessor(Protocol):
    """What every fairness post-processor does: a ranked list in, a permutation of it out."""

    def rerank(self, items: Sequence[FairnessItem]) -> FairnessResult: ...


def _finish(
    items: Sequence[FairnessItem],
    order: Sequence[int],
    k: int,
    explain: Callable[[int, int, int], str],
    *,
    satisfied: bool = True,
    notes: Iterable[str] = (),
) -> FairnessResult:
    """The result of putting ``items`` in ``order`` (input indexes); ``explain(index,
    from_rank, to_rank)`` gives the reason of each item that moved."""
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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# --- FA*IR -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FairTopK:
    """FA*IR: at least m(i) protected items in every prefix i of the top k.

    The greedy re-ranking of the paper: protected and other items each wait in a queue in
    input order; position i takes the best protected item while fewer than m(i) protected items
    are placed, otherwise the better head of the two queues. If protected items run out the
    rest is filled from the others and the result says the condition was not met. Items below
    the top k keep their relative order. The table (`reranker.fairness_metrics.fair_table`)
    is built for min(k, number of items) prefixes, with alpha adjusted for testing them all.

    >>> items = [FairnessItem(x, "big", 3.0 - i) for i, x in enumerate("abc")]
    >>> items.append(FairnessItem("d", "small", 0.5, protected=True))
    >>> FairTopK(k=4, p=0.5, alpha=0.1).rerank(items).ids
    ['a', 'b', 'c', 'd']
    >>> result = FairTopK(k=4, p=0.9, alpha=0.1).rerank(items)  # asks for 1, 2, 3 from rank 2 on
    >>> result.ids, result.satisfied
    (['a', 'd', 'b', 'c'], False)
    """

    k: int = 10
    p: float = 0.3
    alpha: float = 0.1
    #: How explanations name the protected group ("small brands").
    protected_label: str = "protected"

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_TABLE_K:
            raise ValueError(f"FairTopK: k must be between 1 and {MAX_TABLE_K}, got {self.k}")
        fair_table(1, self.p, self.alpha)  # checks p and alpha with a clear message

    def rerank(self, items: Sequence[FairnessItem]) -> FairnessResult:
        top = min(self.k, len(items))
        if top == 0:
            return FairnessResult(())
        table = fair_table(top, self.p, self.alpha)
        protected = deque(i for i, item in enumerate(items) if item.protected)
        others = deque(i for i, item in enumerate(items) if not item.protected)
        order: list[int] = []
        promoted: dict[int, int] = {}  # input index -> the prefix whose minimum it fills
        unmet: int | None = None
        placed = 0
        for position, need in enumerate(table.minimum, start=1):
            if placed < need and protected:
                if others and others[0] < protected[0]:
                    promoted[protected[0]] = position
                pick = protected.popleft()
            elif protected and (not others or protected[0] < others[0]):
                pick = protected.popleft()
            else:
                pick = others.popleft()
                if placed < need and unmet is None:
                    unmet = position
            placed += items[pick].protected
            order.append(pick)
        order += sorted([*protected, *others])

        setting = f"FA*IR, p={self.p}, alpha={self.alpha} adjusted to {table.adjusted_alpha:.3g}"

        def explain(index: int, from_rank: int, to_rank: int) -> str:
            if index in promoted:
                position = promoted[index]
                need = _plural(table.minimum[position - 1], "item")
                return (
                    f"protected group '{self.protected_label}' needed {need} in the top "
                    f"{position} ({setting})"
                )
            # Only promoted items move up: every other item keeps all items it followed above it.
            return f"moved down to make room for promoted protected items ({setting})"

        notes = []
        if unmet is not None:
            notes.append(
                f"only {_plural(placed, 'protected item')} among the candidates: FA*IR asks for "
                f"{table.minimum[unmet - 1]} in the top {unmet} ({setting})"
            )
        return _finish(items, order, top, explain, satisfied=unmet is None, notes=notes)


# --- exposure parity -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExposureParity:
    """Each group's exposure in the top k follows a target share, within a tolerance.

    Exposure of rank r is ``1 / log2(1 + r)`` within the top k. The target share of a group is
    its share of the candidates' relevance mass (`FairnessItem.gain`; counts if all gains are 0)
    or, with ``target``, the share given for it; groups ``target`` does not name split what the
    named ones leave by relevance mass, and the shares of the groups present are normalised.

    Greedy, position by position: a group's deficit at rank r is its target share minus its
    share of the exposure of ranks 1..r (rank r not given yet). The next item in input order
    takes rank r unless the group with the largest deficit is behind by more than ``tolerance``
    (share points) and further behind than that item's group: then that group's best
    remaining item takes it. So ``tolerance=0`` chases the target greedily and ``tolerance=1``
    never moves anything; it is the knob between exposure and nDCG (the result reports the loss).
    """

    k: int = 10
    target: Mapping[str, float] | None = None
    tolerance: float = 0.1
    #: How explanations name a group ("brand", "seller").
    group_label: str = "brand"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"ExposureParity: k must be at least 1, got {self.k}")
        if not 0 <= self.tolerance <= 1:
            raise ValueError(f"ExposureParity: tolerance must be in [0, 1], got {self.tolerance}")
        if self.target is not None and any(share < 0 for share in self.target.values()):
            raise ValueError("ExposureParity: target shares must be >= 0")

    def target_shares(self, items: Sequence[FairnessItem]) -> dict[str, float]:
        """Each group's target share of the top k's exposure (summing to 1)."""
        mass: dict[str, float] = {}
        for item in items:
            mass[item.group] = mass.get(item.group, 0.0) + item.gain
        if sum(mass.values()) <= 0:
            mass = {group: float(count) for group, count in Counter(i.group for i in items).items()}
        if self.target is not None:
            named = {group: self.target[group] for group in mass if group in self.target}
            unnamed = sum(value for group, value in mass.items() if group not in named)
            left = max(0.0, 1.0 - sum(named.values())) / (unnamed or 1.0)
            shares = {group: named.get(group, left * value) for group, value in mass.items()}
            if sum(shares.values()) > 0:
                mass = shares
        total = sum(mass.values())
        return {group: value / total for group, value in mass.items()}

    def rerank(self, items: Sequence[FairnessItem]) -> FairnessResult:
        top = min(self.k, len(items))
        if top == 0:
            return FairnessResult(())
        targets = self.target_shares(items)
        queues: dict[str, deque[int]] = {}
        for index, item in enumerate(items):
            queues.setdefault(item.group, deque()).append(index)
        exposure = dict.fromkeys(queues, 0.0)
        taken = [False] * len(items)
        order: list[int] = []
        promoted: dict[int, tuple[float, float, int]] = {}  # index -> (share, target, rank)
        given = 0.0
        next_in_line = 0
        for rank, weight in enumerate(discounts(top), start=1):
            while taken[next_in_line]:
                next_in_line += 1
            given += weight
            default = items[next_in_line].group
            # Deficits in exposure units: comparing them at one rank compares the shares.
            deficit = {group: targets[group] * given - exposure[group] for group in queues}
            neediest = max(deficit, key=deficit.__getitem__)
            chosen = default
            if deficit[neediest] > max(deficit[default], self.tolerance * given):
                chosen = neediest
                promoted[queues[chosen][0]] = (exposure[chosen] / given, targets[chosen], rank)
            pick = queues[chosen].popleft()
            if not queues[chosen]:
                del queues[chosen]  # only groups with candidates left compete
            taken[pick] = True
            exposure[chosen] += weight
            order.append(pick)
        order += [index for index in range(len(items)) if not taken[index]]

        basis = "its share of the candidates' relevance" if self.target is None else "configured"
        setting = f"exposure parity, tolerance {self.tolerance}"
        label = self.group_label

        def explain(index: int, from_rank: int, to_rank: int) -> str:
            if index in promoted:
                share, target, rank = promoted[index]
                return (
                    f"{label} '{items[index].group}' had {share:.0%} of the exposure up to rank "
                    f"{rank} against a target of {target:.0%} ({basis}), so its best remaining "
                    f"item moved up ({setting})"
                )
            # Only promoted items move up: every other item keeps all items it followed above it.
            return f"moved down as items of under-exposed {label}s moved up ({setting})"

        notes = [
            f"{label} '{group}' has {exposure[group] / given:.0%} of the top {top}'s exposure "
            f"against a target of {target:.0%}"
            for group, target in targets.items()
            if target - exposure[group] / given > self.tolerance
        ]
        return _finish(items, order, top, explain, satisfied=not notes, notes=notes)


# --- group cap -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupCap:
    """At most ``cap`` items per group (brand, seller) in the top k.

    Walking the input in order, an item over its group's cap is pushed below the top k, and the
    next items in line move up in its place; pushed items follow the top k in their input order.
    If too few items of other groups exist to fill the top k, the best-ranked excess items stay
    (fewer items move) and the result says so.
    """

    cap: int = 2
    k: int = 10
    #: How explanations name a group ("brand", "seller").
    group_label: str = "brand"

    def __post_init__(self) -> None:
        if self.cap < 1 or self.k < 1:
            raise ValueError(f"GroupCap: cap and k must be at least 1, got {self.cap}, {self.k}")

    def rerank(self, items: Sequence[FairnessItem]) -> FairnessResult:
        top = min(self.k, len(items))
        counts: Counter[str] = Counter()
        kept: list[int] = []
        excess: list[int] = []
        for index, item in enumerate(items):
            if len(kept) == top:
                break
            if counts[item.group] < self.cap:
                counts[item.group] += 1
                kept.append(index)
            else:
                excess.append(index)
        staying = excess[: top - len(kept)]
        pushed = set(excess[len(staying) :])
        chosen = sorted(kept + staying)
        in_top = set(chosen)
        order = chosen + [index for index in range(len(items)) if index not in in_top]

        label, cap = self.group_label, self.cap
        setting = f"at most {cap} per {label} in the top {self.k}"

        def explain(index: int, from_rank: int, to_rank: int) -> str:
            if index in pushed:
                return f"{label} '{items[index].group}' already fills its cap ({setting})"
            if to_rank < from_rank:
                return f"moved up as items of over-represented {label}s moved down ({setting})"
            return f"moved down as items from other {label}s moved up ({setting})"

        notes = []
        if staying:
            notes.append(
                f"only {len(kept)} items fit the cap: {_plural(len(staying), 'item')} over it "
                f"stay in the top {top} for lack of other {label}s"
            )
        return _finish(items, order, top, explain, satisfied=not staying, notes=notes)


# --- amortized exposure ----------------------------------------------------------------------


class ExposureStore(Protocol):
    """Where `AmortizedExposure` keeps what each group received over the last W queries.

    ``key`` separates policies (or shops). Values are plain floats per group so a remote store
    (Redis) can keep each query's record as JSON; the in-process twin is
    `reranker.exposure_store.InMemoryExposureStore`.
    """

    def get(self, key: str) -> ExposureTotals: ...

    def update(
        self, key: str, exposure: Mapping[str, float], relevance: Mapping[str, float]
    ) -> None: ...


@dataclass(frozen=True)
class AmortizedExposure:
    """Equity of attention amortized over queries (Biega et al., SIGIR 2018), per group.

    Each query hands out attention ``1 / log2(1 + rank)`` over the top k, and each group earns
    the same total in proportion to its candidates' relevance mass (`FairnessItem.gain`; per
    item if all gains are 0), as in the paper's normalisation. A group's surplus is what it
    received minus what it earned, over the store's window plus this query; unfairness is the
    sum of the absolute surpluses. For per-item equity, give each item its own group.

    `rerank` only reads the store: it swaps pairs (a rank in the top k with a rank up to
    ``depth``), each time the swap that lowers unfairness most, at most ``max_swaps`` times,
    and only while nDCG@k stays within ``max_ndcg_loss`` of the input's. Call `record` with the
    order actually shown, so the store learns what users saw (after any later processor).
    """

    store: ExposureStore
    key: str = "default"
    k: int = 10
    depth: int = 20
    max_ndcg_loss: float = 0.05
    max_swaps: int = 10
    #: How explanations name a group ("brand", "seller").
    group_label: str = "brand"

    def __post_init__(self) -> None:
        if self.k < 1 or self.depth < self.k:
            raise ValueError(f"AmortizedExposure: need 1 <= k <= depth, got {self.k}, {self.depth}")
        if self.max_ndcg_loss < 0 or self.max_swaps < 0:
            raise ValueError("AmortizedExposure: max_ndcg_loss and max_swaps must be >= 0")

    def query_totals(self, items: Sequence[FairnessItem]) -> ExposureTotals:
        """The exposure and relevance per group that showing ``items`` in this order hands out."""
        weights = discounts(min(self.k, len(items)))
        exposure = dict.fromkeys((item.group for item in items), 0.0)
        for item, weight in zip(items, weights, strict=False):
            exposure[item.group] += weight
        gains = [item.gain for item in items]
        total_gain = sum(gains)
        if total_gain <= 0:
            gains, total_gain = [1.0] * len(items), float(len(items))
        relevance = dict.fromkeys(exposure, 0.0)
        for item, gain in zip(items, gains, strict=True):
            relevance[item.group] += sum(weights) * gain / total_gain
        return ExposureTotals(exposure, relevance, 1)

    def record(self, items: Sequence[FairnessItem]) -> None:
        """Add the ranking that was shown to the store's window."""
        if items:
            now = self.query_totals(items)
            self.store.update(self.key, now.exposure, now.relevance)

    def rerank(self, items: Sequence[FairnessItem]) -> FairnessResult:
        top, depth = min(self.k, len(items)), min(self.depth, len(items))
        if top == 0:
            return FairnessResult(())
        past = self.store.get(self.key)
        totals = sum_totals([past, self.query_totals(items)])
        before = amortized_unfairness(totals)
        surplus = {  # received minus earned, over the window and this query
            group: totals.exposure.get(group, 0.0) - totals.relevance.get(group, 0.0)
            for group in {*totals.exposure, *totals.relevance}
        }
        weights = [*discounts(top), *[0.0] * (depth - top)]
        gains = [item.gain for item in items]
        best_dcg = sum(g * w for g, w in zip(sorted(gains, reverse=True), weights, strict=False))
        input_dcg = current_dcg = sum(g * w for g, w in zip(gains, weights, strict=False))
        order = list(range(len(items)))
        for _ in range(self.max_swaps):
            best: tuple[float, int, int] | None = None
            for i in range(top):
                for j in range(i + 1, depth):
                    high, low = items[order[i]], items[order[j]]
                    if high.group == low.group:
                        continue
                    shift = weights[i] - weights[j]
                    x, y = surplus[high.group], surplus[low.group]
                    change = abs(x - shift) - abs(x) + abs(y + shift) - abs(y)
                    new_dcg = current_dcg + (low.gain - high.gain) * shift
                    within = best_dcg <= 0 or (input_dcg - new_dcg) / best_dcg <= self.max_ndcg_loss
                    if change < -1e-12 and within and (best is None or change < best[0]):
                        best = (change, i, j)
            if best is None:
                break
            _, i, j = best
            high, low = items[order[i]], items[order[j]]
            shift = weights[i] - weights[j]
            surplus[high.group] -= shift
            surplus[low.group] += shift
            current_dcg += (low.gain - high.gain) * shift
            order[i], order[j] = order[j], order[i]
        after = sum(abs(value) for value in surplus.values())

        label = self.group_label
        queries = f"{past.queries} past {'query' if past.queries == 1 else 'queries'}"
        setting = f"amortized over {queries}, nDCG@{self.k} loss at most {self.max_ndcg_loss}"

        def explain(index: int, from_rank: int, to_rank: int) -> str:
            group, amount = items[index].group, "less" if to_rank < from_rank else "more"
            return f"{label} '{group}' got {amount} exposure than its relevance earned ({setting})"

        note = f"accumulated unfairness {before:.3f} -> {after:.3f} ({setting})"
        return _finish(items, order, top, explain, notes=[note])


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
