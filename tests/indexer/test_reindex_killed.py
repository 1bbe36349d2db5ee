"""A reindex killed midway leaves the alias and the search results as they were."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from opensearchpy.exceptions import TransportError

from indexer.opensearch_store import OpenSearchStore
from indexer.schema import Product
from tests.conftest import axis_vectors, demo_slice
from tests.indexer.store_factories import OPENSEARCH_URL, opensearch_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_killed_reindex_keeps_serving_the_old_version(tmp_path: Path) -> None:
    index = f"killed-{uuid.uuid4().hex[:8]}"
    settings = opensearch_settings()
    store = OpenSearchStore(settings, index)
    old = [Product.model_validate(r) for r in demo_slice(50)]
    vectors = np.zeros((50, 384), dtype=np.float32)
    vectors[:, :8] = axis_vectors(50)
    serving = store.replace_all(old, vectors)
    before = [h.product_id for h in store.search_bm25("women shoes", 10)]

    # A bigger catalog whose bulk load takes seconds: short titles embed fast.
    catalog = tmp_path / "big.jsonl"
    with catalog.open("w") as handle:
        for i, record in enumerate(demo_slice(3000)):
            handle.write(json.dumps({"id": f"new-{i}", "title": record["title"][:40]}) + "\n")
    env = {**os.environ, "SHOPRANK_STORE": "opensearch", "SHOPRANK_OPENSEARCH_URL": OPENSEARCH_URL,
           "SHOPRANK_OPENSEARCH_ALIAS_PREFIX": settings.opensearch_alias_prefix,
           "HF_HUB_OFFLINE": "1", "SHOPRANK_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [sys.executable, "-m", "plugin", "reindex", "--catalog", str(catalog), "--index", index],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        partial: list[str] = []
        while time.monotonic() < deadline and process.poll() is None:
            partial = [name for name in store.client.indices.get(index=f"{store.alias}-v*")
                       if name != serving]
            if partial and _written(store, partial[0]) > 0:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the reindex finished before it could be killed"
        assert partial, "the reindex never started writing"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    assert sorted(store.client.indices.get_alias(name=store.alias)) == [serving]
    assert store.count() == 50
    assert [h.product_id for h in store.search_bm25("women shoes", 10)] == before
    assert partial[0] in store.client.indices.get(index=f"{store.alias}-v*")

    # The next rebuild removes what the killed one left behind.
    store.replace_all(old[:10], vectors[:10])
    remaining = set(store.client.indices.get(index=f"{store.alias}-v*"))
    assert partial[0] not in remaining
    assert store.count() == 10
    store.drop()


def _written(store: OpenSearchStore, name: str) -> int:
    """Documents in a version being built; 0 while its shards are still starting (503)."""
    try:
        return int(store.client.count(index=name)["count"])
    except TransportError:
        return 0


def test_rebuilds_keep_the_last_versions_only() -> None:
    store = OpenSearchStore(
        opensearch_settings(opensearch_keep_versions=2), f"pruned-{uuid.uuid4().hex[:8]}"
    )
    products = [Product.model_validate(r) for r in demo_slice(5)]
    vectors = np.zeros((5, 384), dtype=np.float32)
    vectors[:, :8] = axis_vectors(5)
    names = [store.replace_all(products, vectors) for _ in range(3)]
    remaining = sorted(store.client.indices.get(index=f"{store.alias}-v*"))
    assert remaining == sorted(names[1:])
    assert sorted(store.client.indices.get_alias(name=store.alias)) == [names[2]]
    store.drop()
