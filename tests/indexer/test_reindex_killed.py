"""A reindex killed with SIGKILL at 10%, 50% and 90% of its catalog written, on both stores:
the serving version and the search answers are as they were, and the next run removes what the
killed one left and succeeds."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.indexing import reindex_catalog
from indexer.local_store import LocalStore
from indexer.opensearch_store import OpenSearchStore
from indexer.schema import Product
from tests.conftest import REPO, axis_vectors, demo_slice
from tests.indexer.reindex_child import DIMENSION, HashEncoder
from tests.indexer.store_factories import STORE_KINDS, opensearch_settings

pytestmark = pytest.mark.slow

#: Ten write chunks (`WRITE_CHUNK`, the bulk chunk: 500 each), so 10%, 50% and 90% fall on
#: chunk boundaries.
CATALOG_SIZE = 5000
FRACTIONS = [pytest.param(f, id=f"{f:.0%}") for f in (0.1, 0.5, 0.9)]

Store = LocalStore | OpenSearchStore


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog whose products differ from the serving ones; short titles write fast."""
    path = tmp_path_factory.mktemp("killed") / "catalog.jsonl"
    with path.open("w") as handle:
        for i, record in enumerate(demo_slice(CATALOG_SIZE)):
            handle.write(json.dumps({"id": f"new-{i}", "title": record["title"][:40]}) + "\n")
    return path


@pytest.fixture
def serving(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Store, str]]:
    """(store kind, a store serving 50 real products, the child's name for it)."""
    kind = request.param
    store: Store
    if kind == "local":
        store = LocalStore(tmp_path / "idx")
        target = str(store.root)
    else:
        target = f"killed-{uuid.uuid4().hex[:8]}"
        store = OpenSearchStore(opensearch_settings(), target, dimension=DIMENSION)
    old = [Product.model_validate(r) for r in demo_slice(50)]
    store.replace_all(old, axis_vectors(50, DIMENSION))
    yield kind, store, target
    if isinstance(store, OpenSearchStore):
        store.drop()
    store.close()


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("serving", STORE_KINDS, indirect=True)
def test_a_reindex_killed_midway_keeps_serving_and_the_next_run_cleans_up(
    serving: tuple[str, Store, str], fraction: float, catalog: Path
) -> None:
    kind, store, target = serving
    before = _answers(store)
    version = _serving_version(store)

    child = subprocess.Popen(
        [sys.executable, "-m", "tests.indexer.reindex_child", kind, target, str(catalog),
         str(fraction)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        said = _first_line(child, timeout_s=300)
        assert said.startswith("written "), f"the reindex did not stop midway: {said!r}"
        written = int(said.split()[1])
        assert fraction <= written / CATALOG_SIZE < fraction + 0.1, said
        partial = _partial_versions(store, version)
        assert partial, "the killed reindex had started a new version"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # What a process that opens the index now sees: the old version, the old answers.
    after = LocalStore(store.root) if isinstance(store, LocalStore) else store
    assert _serving_version(after) == version
    assert after.count() == 50
    assert _answers(after) == before
    assert _partial_versions(store, version) == partial, "the leftovers wait for the next run"

    report, _ = reindex_catalog(store, catalog, HashEncoder())  # type: ignore[arg-type]
    assert not set(partial) & set(_versions(store)), "the next run removed the leftovers"
    assert _serving_version(store) == report.version and store.count() == CATALOG_SIZE
    assert store.get("new-0") is not None and store.get(before[0][0]) is None


def _answers(store: Store) -> list[list[str]]:
    """A lexical and a vector query's top ten."""
    query = axis_vectors(1, DIMENSION)[0]
    return [
        [hit.product_id for hit in store.search_bm25("women shoes", 10)],
        [hit.product_id for hit in store.search_vector(query, 10)],
    ]


def _serving_version(store: Store) -> str:
    if isinstance(store, LocalStore):
        return (store.root / "CURRENT").read_text().strip()
    aliased = store.client.indices.get_alias(name=store.alias)
    assert len(aliased) == 1
    return next(iter(aliased))


def _versions(store: Store) -> list[str]:
    """Every version on disk or on the server, complete or not."""
    if isinstance(store, LocalStore):
        return sorted(p.name for p in store.root.iterdir() if p.is_dir())
    return sorted(store.client.indices.get(index=f"{store.alias}-v*"))


def _partial_versions(store: Store, serving: str) -> list[str]:
    return [name for name in _versions(store) if name != serving]


def _first_line(child: subprocess.Popen[str], *, timeout_s: float) -> str:
    """The child's first line on stdout (its stderr if it died first)."""
    assert child.stdout is not None and child.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if selector.select(timeout=1.0):
                line = child.stdout.readline()
                if line:
                    return line.strip()
                return "exited: " + child.stderr.read()[-2000:]
    return f"no line within {timeout_s} s"


@pytest.mark.integration
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
