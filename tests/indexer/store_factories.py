"""Builds each `VectorStore` implementation for the shared contract suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from indexer.local_store import LocalStore
from indexer.opensearch_store import OpenSearchStore
from indexer.settings import IndexerSettings

OPENSEARCH_URL = os.environ.get("SHOPRANK_OPENSEARCH_URL", "http://127.0.0.1:9200")

StoreFactory = Callable[[int], LocalStore | OpenSearchStore]


def opensearch_settings(**overrides: object) -> IndexerSettings:
    return IndexerSettings.model_validate(
        {"store": "opensearch", "opensearch_url": OPENSEARCH_URL, "opensearch_timeout_s": 30,
         "opensearch_alias_prefix": "shoprank-test", **overrides}
    )


def store_factory(kind: str, tmp_path: Path) -> Iterator[StoreFactory]:
    """Yields a function that makes an empty store of the given vector dimension."""
    made: list[OpenSearchStore] = []

    def make(dimension: int) -> LocalStore | OpenSearchStore:
        if kind == "local":
            return LocalStore(tmp_path / f"idx-{uuid.uuid4().hex[:8]}")
        store = OpenSearchStore(opensearch_settings(), uuid.uuid4().hex[:12], dimension=dimension)
        made.append(store)
        return store

    yield make
    for store in made:
        store.drop()
        store.close()


STORE_KINDS = [
    pytest.param("local", id="local"),
    pytest.param("opensearch", id="opensearch", marks=pytest.mark.integration),
]
