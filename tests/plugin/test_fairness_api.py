"""A search request's fairness policy: validated, applied after ranking, explained."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.encoder import BiEncoder
from indexer.indexing import index_products
from indexer.local_store import LocalStore
from plugin.api import create_app
from plugin.fairness.metrics import fair_table
from plugin.pipeline import SearchPipeline
from plugin.search_plan import SearchSettings
from plugin.settings import Settings
from tests.conftest import make_product


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """Twelve running shoes: nine from big brand Acme first, three from small brands."""
    products = [make_product(f"a{i}", f"running shoes model {i}", brand="Acme")
                for i in range(9)]
    products += [make_product(f"s{i}", f"trail running shoes {name}", brand=name)
                 for i, name in enumerate(["Kestrel", "Wren", "Finch"])]
    store = LocalStore(tmp_path / "idx")
    encoder = BiEncoder()
    index_products(store, products, encoder)
    pipeline = SearchPipeline(store, encoder, settings=SearchSettings(candidates=12))
    with TestClient(create_app(Settings(), pipeline)) as client:
        yield client


def _search(client: TestClient, **body: Any) -> dict[str, Any]:
    body = {"query": "running shoes model", "k": 6, "mode": "bm25", **body}
    response = client.post("/search", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_fair_topk_lifts_protected_brands_into_the_top_k_and_says_why(
    client: TestClient,
) -> None:
    plain = _search(client)
    assert [hit["brand"] for hit in plain["results"]].count("Acme") == 6
    fair = _search(client, explain=True, fairness={
        "policy": "fair_topk", "protected": ["Kestrel", "Wren", "Finch"], "p": 0.7,
        "alpha": 0.1,
    })
    protected = [hit["brand"] != "Acme" for hit in fair["results"]]
    table = fair_table(6, 0.7, 0.1)
    assert table.minimum[-1] >= 2
    for prefix, needed in enumerate(table.minimum, start=1):
        assert sum(protected[:prefix]) >= needed
    summary = fair["fairness"]
    assert summary["policy"] == "fair_topk" and summary["moved"] > 0 and summary["satisfied"]
    assert summary["ndcg_loss"] >= 0
    moved = [hit for hit in fair["results"] if hit["explanation"].get("fairness_move")]
    assert moved and all("moved from rank" in hit["explanation"]["fairness_move"]
                         for hit in moved)


def test_a_query_that_names_a_brand_is_left_as_ranked(client: TestClient) -> None:
    policy = {"policy": "fair_topk", "protected": ["Kestrel", "Wren", "Finch"], "p": 0.7}
    named = _search(client, query="acme running shoes", fairness=policy)
    assert [hit["brand"] for hit in named["results"]].count("Acme") == 6
    assert named["fairness"]["moved"] == 0
    assert "names brand 'Acme'" in named["fairness"]["notes"][0]
    forced = _search(client, query="acme running shoes",
                     fairness={**policy, "exempt_named_groups": False})
    assert forced["fairness"]["moved"] > 0


def test_group_cap_limits_one_brand_in_the_top_k(client: TestClient) -> None:
    capped = _search(client, fairness={"policy": "group_cap", "cap": 3})
    assert [hit["brand"] for hit in capped["results"]].count("Acme") == 3
    assert capped["fairness"]["satisfied"]


def test_protected_by_rule_is_the_rare_brands_of_the_catalog(client: TestClient) -> None:
    # Acme holds 9 of the 12 products, each small brand 1 (8%): below 10%, not below 5%.
    fair = _search(client, fairness={"policy": "fair_topk", "protected_share_below": 0.1})
    assert fair["fairness"]["protected_groups"] == ["Finch", "Kestrel", "Wren"]
    none = _search(client, fairness={"policy": "fair_topk", "protected_share_below": 0.05})
    assert none["fairness"]["protected_groups"] == [] and none["fairness"]["moved"] == 0


def test_protected_names_match_in_any_case(client: TestClient) -> None:
    fair = _search(client, fairness={"policy": "fair_topk", "protected": ["kestrel"], "p": 0.5})
    assert fair["fairness"]["protected_groups"] == ["Kestrel"]


@pytest.mark.parametrize(("fairness", "problem"), [
    ({"policy": "fair_topk"}, "needs the protected groups"),
    ({"policy": "fair_topk", "protected": ["X"], "protected_share_below": 0.1}, "not both"),
    ({"policy": "fair_topk", "protected": ["X"], "p": 1.5}, "less than 1"),
    ({"policy": "group_cap", "cap": 0}, "greater than or equal to 1"),
    ({"policy": "group_cap", "seller": "x"}, "Extra inputs are not permitted"),
    ({"policy": "lottery"}, "'group_cap', 'amortized' or 'none'"),
])
def test_bad_policies_are_named(client: TestClient, fairness: dict[str, Any],
                                problem: str) -> None:
    response = client.post("/search", json={"query": "shoes", "fairness": fairness})
    assert response.status_code == 422
    assert problem in response.text and "fairness" in response.text


def test_the_server_default_policy_applies_unless_a_request_says_none(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOPRANK_FAIRNESS", '{"policy": "group_cap", "cap": 3}')
    client.app.state.pipeline.settings.fairness = Settings().fairness  # type: ignore[attr-defined]
    default = _search(client)
    assert default["fairness"]["policy"] == "group_cap"
    assert [hit["brand"] for hit in default["results"]].count("Acme") == 3
    off = _search(client, fairness={"policy": "none"})
    assert "fairness" not in off
    assert [hit["brand"] for hit in off["results"]].count("Acme") == 6


def test_amortized_exposure_shares_attention_across_repeated_queries(
    client: TestClient,
) -> None:
    """Acme wins every slot of each single answer; over repeated queries small brands earn
    some attention, and the policy hands it out without pushing Acme off the top."""
    policy = {"policy": "amortized", "max_ndcg_loss": 0.3}
    shown = []
    for _ in range(4):
        response = _search(client, fairness=policy)
        shown.append(sum(hit["brand"] != "Acme" for hit in response["results"]))
        assert response["results"][0]["brand"] == "Acme"
        assert response["fairness"]["ndcg_loss"] <= 0.3
    assert shown[0] == 0  # nothing owed yet: the first answer is the unconstrained one
    assert sum(shown[1:]) > 0  # Acme's accumulated surplus lets small brands in later
