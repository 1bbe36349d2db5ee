"""The per-query fairness post-processors: FA*IR, exposure parity and a cap per group.

`FairTopK` (FA*IR, a minimum of protected items in every prefix of the top k),
`ExposureParity` (group exposure follows a target share) and `GroupCap` (at most n items per
group in the top k). Each maps a ranked list of `plugin.fairness.items.FairnessItem` to a
permutation of it; `plugin.fairness.amortized.AmortizedExposure` is the policy that works
across queries.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from plugin.fairness.items import FairnessItem, FairnessResult, reordered
from plugin.fairness.metrics import MAX_TABLE_K, discounts, fair_table


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
    the top k keep their relative order. The table (`plugin.fairness.metrics.fair_table`)
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
        return reordered(items, order, top, explain, satisfied=unmet is None, notes=notes)


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
        return reordered(items, order, top, explain, satisfied=not notes, notes=notes)


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
        return reordered(items, order, top, explain, satisfied=not staying, notes=notes)
