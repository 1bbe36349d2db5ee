"""`AmortizedExposure`: equity of attention across queries, its window in an `ExposureStore`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from plugin.fairness.exposure_store import ExposureStore
from plugin.fairness.items import FairnessItem, FairnessResult, reordered
from plugin.fairness.metrics import (
    ExposureTotals,
    amortized_unfairness,
    discounts,
    sum_totals,
)


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
        return reordered(items, order, top, explain, notes=[note])
