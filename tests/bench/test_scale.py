"""The scale benchmark (`bench/scale.py`) end to end at tiny sizes on the local store: a
synthetic catalog from a small real source index, a row per size with sane fields, and the
synthetic products themselves (new ids, perturbed text, vectors near their source's)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from bench.scale import main
from bench.scale_data import Plan, QuerySet, Source, SyntheticProducts, perturb
from indexer.local_store import LocalStore
from indexer.schema import Product
from tests.conftest import demo_slice


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local index of 60 real catalog products with random unit vectors."""
    root = tmp_path_factory.mktemp("source") / "real"
    products = [Product.model_validate(r) for r in demo_slice(60)]
    rng = np.random.default_rng(1)
    vectors = perturb(np.zeros((60, 16), np.float32), 1.0, rng)
    LocalStore(root).replace_all(products, vectors, title_vectors=perturb(vectors, 0.1, rng))
    return root


def test_synthetic_products_copy_their_source_with_new_ids_and_changes(source: Path) -> None:
    real = Source.load(source)
    products = SyntheticProducts(real, Plan.make(real, 150, seed=0))
    assert len(products) == 150
    assert len({p.id for p in products}) == 150
    for i, product in itertools.islice(enumerate(products), 0, 150, 37):
        original = real.records[i % 60]
        assert product.id != original["id"]
        assert product.brand == original.get("brand")
        assert product.title != original["title"]
        assert set(product.title.split()) <= set(original["title"].split()) | {
            "v2", "pro", "plus", "mini", "kit", "set", "2-pack", "bundle", "xl", "refurbished"}
    assert products[-1].id == products[149].id


def test_query_vectors_are_near_their_product_but_not_in_the_catalog(source: Path) -> None:
    real = Source.load(source)
    queries = QuerySet.make(real, 20, seed=0)
    assert len(queries.texts) == 20
    assert all(1 <= len(text.split()) <= 4 for text in queries.texts)  # titles cut short
    cosines = queries.vectors @ real.vectors.T
    assert np.all(cosines.max(axis=1) < 0.9999)  # no query vector is a product's
    assert np.allclose(np.linalg.norm(queries.vectors, axis=1), 1.0, atol=1e-5)


def test_a_tiny_run_reports_a_row_per_size_with_sane_fields(
    source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scale.md"
    rows = main(["--sizes", "300,500", "--stores", "local", "--source", str(source),
                 "--queries", "20", "--upserts", "2", "--batch", "20",
                 "--work", str(tmp_path / "work"), "--out", str(out)])
    assert [(r["size"], r["store"]) for r in rows] == [(300, "local"), (500, "local")]
    for row in rows:
        assert row["count"] == row["size"]
        assert row["build_s"] > 0 and row["open_s"] > 0 and row["disk_bytes"] > 0
        assert row["rss_mb"] > 0
        for key in ("vector_ms", "filtered_vector_ms", "bm25_ms", "hybrid_final_ms"):
            assert 0 < row[key]["p50"] <= row[key]["p95"], key
        assert row["vector_ms"]["count"] == 20
        assert 0.0 <= row["recall_at_100"] <= 1.0
        if not row["approximate"]:
            assert row["recall_at_100"] == 1.0  # an exact store finds the exact top 100
        for kind in ("upsert", "upsert_batch", "delete", "delete_batch"):
            assert row[kind]["visible_here_s_max"] is not None, kind
            assert row[kind]["visible_other_s_max"] is not None, kind
    report = out.read_text()
    assert "| 300 |" in report and "| 500 |" in report
    assert "Query encoding is excluded" in report
    saved = json.loads(out.with_suffix(".json").read_text())
    assert len(saved["rows"]) == 2
    assert not (tmp_path / "work" / "n300").exists()  # scratch removed without --keep
