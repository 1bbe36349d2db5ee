"""Fairness post-processors: hand-built rankings, edge cases and properties."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.fairness.amortized import AmortizedExposure
from plugin.fairness.exposure_store import InMemoryExposureStore
from plugin.fairness.items import (
    NO_GROUP,
    FairnessItem,
    FairnessResult,
    FairReordering,
    group_counts,
    make_items,
    rare_groups,
)
from plugin.fairness.metrics import (
    amortized_unfairness,
    fair_table,
    fair_violation,
    gain_ndcg,
    sum_totals,
)
from plugin.fairness.policies import ExposureParity, FairTopK, GroupCap
from tests.conftest import make_product

PROPERTIES = settings(max_examples=100, deadline=None)


def ranking(spec: str) -> list[FairnessItem]:
    """Items from ``"A a B b"``: one item per letter, group = the letter in lower case,
    upper case = protected, scores falling by 1 from rank to rank, ids ``<letter><rank>``."""
    letters = spec.split()
    return [
        FairnessItem(
            f"{letter}{rank}", letter.lower(), float(len(letters) - rank), letter.isupper()
        )
        for rank, letter in enumerate(letters, start=1)
    ]


def permutation_of(result: FairnessResult, items: Sequence[FairnessItem]) -> bool:
    return sorted(result.ids) == sorted(item.id for item in items) and len(result.items) == len(
        items
    )


def consistent_moves(result: FairnessResult, items: Sequence[FairnessItem]) -> bool:
    before = {item.id: rank for rank, item in enumerate(items, start=1)}
    after = {item.id: rank for rank, item in enumerate(result.items, start=1)}
    moved = {move.id: (move.from_rank, move.to_rank) for move in result.moves}
    changed = {i: (before[i], after[i]) for i in before if before[i] != after[i]}
    return moved == changed and all(move.reason for move in result.moves)


# --- FA*IR -----------------------------------------------------------------------------------


def test_fair_top_k_promotes_protected_items_where_the_table_asks() -> None:
    # Table for k=10, p=0.5, alpha=0.1: (0, 0, 0, 0, 1, 1, 1, 2, 2, 3).
    items = ranking("n n n n n n n n N N n N")
    fair = FairTopK(k=10, p=0.5, alpha=0.1, protected_label="small brands")
    result = fair.rerank(items)
    # Rank 5 needs 1 protected item: N9. Rank 8 needs 2: N10. Rank 9 needs 2, and n7 comes
    # before N12 in the input. Rank 10 needs 3: N12. Then n8 and n11 in their order.
    assert result.ids == ["n1", "n2", "n3", "n4", "N9", "n5", "n6", "N10", "n7", "N12", "n8", "n11"]
    assert result.satisfied
    promoted = {move.id: move for move in result.moves if move.to_rank < move.from_rank}
    assert set(promoted) == {"N9", "N10", "N12"}
    assert promoted["N10"].reason == (
        "protected group 'small brands' needed 2 items in the top 8 "
        "(FA*IR, p=0.5, alpha=0.1 adjusted to 0.0547)"
    )
    assert "moved down" in next(m.reason for m in result.moves if m.id == "n5")
    assert consistent_moves(result, items)
    assert result.ndcg_loss > 0


def test_fair_top_k_leaves_a_fair_ranking_alone() -> None:
    items = ranking("N n N n N n N n N n")
    result = FairTopK(k=10, p=0.5, alpha=0.1).rerank(items)
    assert result.ids == [item.id for item in items]
    assert result.moves == ()
    assert result.ndcg_loss == 0.0


def test_items_beyond_k_keep_their_relative_order() -> None:
    items = ranking("n n n n n N n n N n")
    result = FairTopK(k=4, p=0.9, alpha=0.1).rerank(items)
    top, rest = result.ids[:4], result.ids[4:]
    assert {"N6", "N9"} <= set(top)
    assert rest == [i for i in (item.id for item in items) if i not in top]


def test_no_protected_items_is_reported_not_hidden() -> None:
    items = ranking("n n n n n n n n n n")
    result = FairTopK(k=10, p=0.5, alpha=0.1).rerank(items)
    assert result.ids == [item.id for item in items]
    assert not result.satisfied
    assert result.notes == (
        "only 0 protected items among the candidates: FA*IR asks for 1 in the top 5 "
        "(FA*IR, p=0.5, alpha=0.1 adjusted to 0.0547)",
    )


def test_all_protected_items_change_nothing() -> None:
    items = ranking("N N N N N")
    result = FairTopK(k=10, p=0.9, alpha=0.1).rerank(items)
    assert result.ids == [item.id for item in items]
    assert result.satisfied


def test_k_larger_than_the_list_uses_the_table_of_the_list() -> None:
    items = ranking("n n n N")
    result = FairTopK(k=50, p=0.9, alpha=0.1).rerank(items)
    table = fair_table(4, 0.9, 0.1)  # (0, 1, 2, 3): only 1 protected item for 3
    assert table.minimum == (0, 1, 2, 3)
    assert result.ids == ["n1", "N4", "n2", "n3"]
    assert not result.satisfied


def test_ties_keep_input_order() -> None:
    items = [FairnessItem(f"t{i}", "g", 1.0, protected=i % 2 == 0) for i in range(6)]
    for processor in (FairTopK(k=6, p=0.5), GroupCap(cap=6, k=6), ExposureParity(k=6)):
        assert processor.rerank(items).ids == [item.id for item in items]


def test_every_processor_returns_nothing_for_nothing() -> None:
    store = InMemoryExposureStore()
    processors: list[FairReordering] = [
        FairTopK(),
        ExposureParity(),
        GroupCap(),
        AmortizedExposure(store),
    ]
    for processor in processors:
        assert processor.rerank([]) == FairnessResult(())


def test_bad_parameters_are_refused_with_their_name() -> None:
    with pytest.raises(ValueError, match="proportion p"):
        FairTopK(p=1.5)
    with pytest.raises(ValueError, match="tolerance"):
        ExposureParity(tolerance=2)
    with pytest.raises(ValueError, match="cap and k"):
        GroupCap(cap=0)
    with pytest.raises(ValueError, match="k <= depth"):
        AmortizedExposure(InMemoryExposureStore(), k=10, depth=5)
    with pytest.raises(ValueError, match="relevance"):
        FairnessItem("x", "g", 1.0, relevance=-1.0)


# --- group cap -------------------------------------------------------------------------------


def test_group_cap_pushes_excess_items_below_k_in_their_order() -> None:
    items = ranking("a a a b a c a d")
    result = GroupCap(cap=2, k=4).rerank(items)
    assert result.ids == ["a1", "a2", "b4", "c6", "a3", "a5", "a7", "d8"]
    assert result.satisfied
    reasons = {move.id: move.reason for move in result.moves}
    assert reasons["a3"] == "brand 'a' already fills its cap (at most 2 per brand in the top 4)"
    assert "moved up" in reasons["c6"]
    assert consistent_moves(result, items)


def test_group_cap_keeps_excess_items_when_no_others_exist() -> None:
    items = ranking("a a a b a")
    result = GroupCap(cap=1, k=4).rerank(items)
    # Only a1 and b4 fit the cap; a2 and a3 stay (fewer items move), a5 goes below.
    assert result.ids == ["a1", "a2", "a3", "b4", "a5"]
    assert result.moves == ()
    assert not result.satisfied
    assert result.notes == (
        "only 2 items fit the cap: 2 items over it stay in the top 4 for lack of other brands",
    )


# --- exposure parity -------------------------------------------------------------------------


def test_exposure_parity_follows_a_configured_share() -> None:
    items = ranking("a a a a a a b b")
    parity = ExposureParity(k=4, target={"b": 0.5}, tolerance=0.1)
    assert parity.target_shares(items) == pytest.approx({"a": 0.5, "b": 0.5})
    result = parity.rerank(items)
    # Rank 1: a and b are both 50 points behind; a1 is next in line. Rank 2: b has 0% of the
    # exposure 1 + 0.631 against 50%, a 61%: b7. Rank 3: b has 0.631 / 2.131 = 30%, 20 points
    # behind, a 3 points: b8. Then b has no candidates left: a2.
    assert result.ids[:4] == ["a1", "b7", "b8", "a2"]
    promoted = next(move for move in result.moves if move.id == "b7")
    assert promoted.reason == (
        "brand 'b' had 0% of the exposure up to rank 2 against a target of 50% (configured), "
        "so its best remaining item moved up (exposure parity, tolerance 0.1)"
    )
    assert result.ndcg_loss == pytest.approx(
        gain_ndcg([item.gain for item in items], 4) - gain_ndcg([i.gain for i in result.items], 4)
    )
    assert consistent_moves(result, items)


def test_exposure_parity_targets_follow_relevance_mass_by_default() -> None:
    items = [
        FairnessItem("x", "a", 0.0, relevance=3.0),
        FairnessItem("y", "b", 5.0, relevance=1.0),
        FairnessItem("z", "c", -2.0),  # no relevance: the score clipped at 0 counts nothing
    ]
    assert ExposureParity().target_shares(items) == {"a": 0.75, "b": 0.25, "c": 0.0}


def test_unnamed_groups_share_what_the_named_ones_leave_by_relevance() -> None:
    items = [FairnessItem("x", "a", 3.0), FairnessItem("y", "b", 1.0), FairnessItem("z", "c", 1.0)]
    shares = ExposureParity(target={"c": 0.2}).target_shares(items)
    assert shares == pytest.approx({"a": 0.6, "b": 0.2, "c": 0.2})


def test_full_tolerance_moves_nothing() -> None:
    items = ranking("a a a a b")
    assert ExposureParity(k=5, target={"b": 0.9}, tolerance=1.0).rerank(items).moves == ()


def test_a_group_without_enough_candidates_is_reported() -> None:
    items = ranking("a a a a b")
    result = ExposureParity(k=5, target={"b": 0.9}, tolerance=0.1).rerank(items)
    assert result.ids[0] == "b5"
    assert not result.satisfied
    assert "brand 'b' has" in result.notes[0]


# --- amortized exposure ----------------------------------------------------------------------


def test_store_keeps_the_last_window_queries() -> None:
    store = InMemoryExposureStore(window=3)
    for value in range(5):
        store.update("policy", {"a": float(value)}, {"a": 1.0})
    totals = store.get("policy")
    assert totals.exposure == {"a": 2.0 + 3.0 + 4.0}
    assert totals.relevance == {"a": 3.0}
    assert totals.queries == 3
    assert store.get("other").queries == 0


def test_amortized_exposure_reads_the_store_and_only_record_writes() -> None:
    store = InMemoryExposureStore()
    fair = AmortizedExposure(store, key="brands", k=3, depth=5)
    items = ranking("a a a b b")
    fair.rerank(items)
    assert store.get("brands").queries == 0
    fair.record(items)
    totals = store.get("brands")
    assert totals.queries == 1
    # Attention 1 + 0.63 + 0.5 = 2.13 goes to a; relevance splits it by gain 4+3+2 : 1+0.
    attention = sum(1 / math.log2(rank + 1) for rank in (1, 2, 3))
    assert totals.exposure == pytest.approx({"a": attention, "b": 0.0})
    assert totals.relevance == pytest.approx({"a": attention * 9 / 10, "b": attention / 10})


def test_amortized_exposure_lowers_unfairness_over_repeated_queries() -> None:
    # The same query again and again: always showing a first starves b, which is nearly as
    # relevant. Amortization shares the top rank over time, within the nDCG budget per query.
    items = [
        FairnessItem("a1", "a", 1.0, relevance=1.0),
        FairnessItem("b1", "b", 0.9, relevance=0.9),
        FairnessItem("a2", "a", 0.8, relevance=0.8),
        FairnessItem("b2", "b", 0.7, relevance=0.7),
    ]
    plain, fair_store = InMemoryExposureStore(window=20), InMemoryExposureStore(window=20)
    fair = AmortizedExposure(fair_store, k=2, depth=4, max_ndcg_loss=0.1)
    baseline = AmortizedExposure(plain, k=2, depth=4)
    for _ in range(20):
        result = fair.rerank(items)
        assert result.ndcg_loss <= 0.1 + 1e-9
        fair.record(result.items)
        baseline.record(items)
    assert amortized_unfairness(fair_store.get("default")) < amortized_unfairness(
        plain.get("default")
    )
    reasons = {m.reason for m in fair.rerank(items).moves}
    assert all("exposure than its relevance earned" in reason for reason in reasons)


# --- building items --------------------------------------------------------------------------


def test_make_items_from_products_and_dicts() -> None:
    products = [
        make_product("p1", "Kettle", brand="Acme"),
        make_product("p2", "Toaster"),  # no brand
        {"id": "p3", "title": "Mug", "brand": "Tiny"},
    ]
    counts = {"Acme": 90, "Tiny": 4, NO_GROUP: 6}
    small = rare_groups(counts, 0.05)
    assert small == {"Tiny"}
    items = make_items(products, [3.0, 2.0, 1.0], protected_groups=small, relevance=[1, 0, 2])
    assert items == [
        FairnessItem("p1", "Acme", 3.0, False, 1.0),
        FairnessItem("p2", NO_GROUP, 2.0, False, 0.0),
        FairnessItem("p3", "Tiny", 1.0, True, 2.0),
    ]
    by_title = make_items(products, [1, 1, 1], group=lambda p: str(getattr(p, "title", "")))
    assert [item.group for item in by_title] == ["Kettle", "Toaster", NO_GROUP]
    assert group_counts(products) == {"Acme": 1, NO_GROUP: 1, "Tiny": 1}
    with pytest.raises(ValueError, match="one score"):
        make_items(products, [1.0])


# --- properties ------------------------------------------------------------------------------


@st.composite
def rankings(draw: st.DrawFn) -> list[FairnessItem]:
    size = draw(st.integers(0, 25))
    scores = draw(
        st.lists(
            st.sampled_from([0.0, 1.0, 2.0]) | st.floats(-3, 3, allow_nan=False),
            min_size=size,
            max_size=size,
        )
    )
    items = []
    for index, score in enumerate(sorted(scores, reverse=True)):
        group = draw(st.sampled_from("abcd"))
        relevance = draw(st.none() | st.floats(0, 3))
        items.append(FairnessItem(f"i{index}", group, score, draw(st.booleans()), relevance))
    return items


ks = st.integers(1, 30)


@PROPERTIES
@given(rankings(), ks, st.sampled_from([0.1, 0.3, 0.5, 0.8]), st.sampled_from([0.05, 0.1, 0.2]))
def test_fair_top_k_properties(items: list[FairnessItem], k: int, p: float, alpha: float) -> None:
    result = FairTopK(k=k, p=p, alpha=alpha).rerank(items)
    assert permutation_of(result, items)
    assert consistent_moves(result, items)
    assert all(m.to_rank > m.from_rank or "needed" in m.reason for m in result.moves)
    top = min(k, len(items))
    if not top:
        return
    table = fair_table(top, p, alpha)
    flags = [item.protected for item in result.items[:top]]
    if sum(item.protected for item in items) >= table.minimum[-1]:
        assert fair_violation(flags, table) is None
        assert result.satisfied
    else:
        assert not result.satisfied
        assert sum(flags) == sum(item.protected for item in items)  # every one was promoted


@PROPERTIES
@given(rankings(), ks, st.integers(1, 4))
def test_group_cap_properties(items: list[FairnessItem], k: int, cap: int) -> None:
    result = GroupCap(cap=cap, k=k).rerank(items)
    assert permutation_of(result, items)
    assert consistent_moves(result, items)
    top = min(k, len(items))
    fits = sum(min(count, cap) for count in Counter(i.group for i in items).values())
    if fits >= top:
        assert max(Counter(i.group for i in result.items[:top]).values(), default=0) <= cap
        assert result.satisfied


@PROPERTIES
@given(rankings(), ks, st.sampled_from([0.0, 0.05, 0.2]), st.booleans())
def test_exposure_parity_properties(
    items: list[FairnessItem], k: int, tolerance: float, configured: bool
) -> None:
    target = {"a": 0.4, "d": 0.1} if configured else None
    result = ExposureParity(k=k, target=target, tolerance=tolerance).rerank(items)
    assert permutation_of(result, items)
    assert consistent_moves(result, items)
    assert all(m.to_rank > m.from_rank or "its best" in m.reason for m in result.moves)


@PROPERTIES
@given(st.lists(rankings(), min_size=1, max_size=4), st.integers(1, 6), st.floats(0, 0.3))
def test_amortized_exposure_properties(
    queries: list[list[FairnessItem]], k: int, budget: float
) -> None:
    store = InMemoryExposureStore(window=3)
    fair = AmortizedExposure(store, k=k, depth=2 * k, max_ndcg_loss=budget)
    for items in queries:
        result = fair.rerank(items)
        assert permutation_of(result, items)
        assert consistent_moves(result, items)
        assert result.ndcg_loss <= budget + 1e-9
        before = sum_totals([store.get("default"), fair.query_totals(items)])
        after = sum_totals([store.get("default"), fair.query_totals(result.items)])
        assert amortized_unfairness(after) <= amortized_unfairness(before) + 1e-9
        fair.record(result.items)


def test_in_memory_store_keeps_running_sums_of_its_window() -> None:
    store = InMemoryExposureStore(window=3)
    records = [({"a": 1.0, "b": 0.5}, {"a": 0.2}), ({"b": 1.0}, {"b": 0.7}),
               ({"a": 0.25}, {"a": 0.1, "c": 0.4}), ({"c": 2.0}, {"c": 1.0})]
    for exposure, relevance in records:
        store.update("k", exposure, relevance)
    totals = store.get("k")  # the first record has left the window
    assert totals.queries == 3
    assert totals.exposure == pytest.approx({"a": 0.25, "b": 1.0, "c": 2.0})
    assert totals.relevance == pytest.approx({"a": 0.1, "b": 0.7, "c": 1.4})
    assert store.get("other").queries == 0


def test_in_memory_store_forgets_the_least_recently_updated_key_past_max_keys() -> None:
    """Requests choose the key (each max_ndcg_loss is its own window), so keys are capped."""
    store = InMemoryExposureStore(window=3, max_keys=2)
    for loss in (0.01, 0.02, 0.01, 0.03):  # 0.01 updated again, so 0.02 is the oldest
        store.update(f"brand:{loss}", {"a": 1.0}, {"a": 1.0})
    assert len(store) == 2
    assert store.get("brand:0.02").queries == 0  # forgotten: a new window starts empty
    assert store.get("brand:0.01").queries == 2 and store.get("brand:0.03").queries == 1
    for i in range(1000):
        store.update(f"brand:{i / 1000}", {"a": 1.0}, {"a": 1.0})
    assert len(store) == 2
    with pytest.raises(ValueError, match="max_keys must be at least 1"):
        InMemoryExposureStore(max_keys=0)
