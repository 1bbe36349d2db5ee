"""A full disk under ``SHOPRANK_HOME`` (a 1 MiB tmpfs mounted for the test): a reindex fails
with a clear message and exit code 1, the old version keeps serving and the partial one is
gone; a live upsert fails naming the log and loses nothing acknowledged before it.

Mounting needs root (CAP_SYS_ADMIN), as CI runs; elsewhere these tests skip saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import StoreError
from indexer.local_store import LocalStore
from indexer.local_update_log import UPDATES
from indexer.schema import Product
from tests.conftest import REPO, demo_slice
from tests.indexer.reindex_child import HashEncoder

pytestmark = pytest.mark.slow

DIMENSION = 384
#: The real `shoprank` CLI, with a stand-in encoder so that no model is loaded.
CLI = (
    "import sys; import plugin.cli.index as cli; from plugin.cli import app; "
    "from tests.indexer.reindex_child import HashEncoder; "
    f"cli.build_encoder = lambda settings: HashEncoder({DIMENSION}); app()"
)


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: room for a small index, not for a second, bigger one."""
    home = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    home.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(home)],
        capture_output=True, text=True, check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({mounted.stderr.strip()}); "
                    "this needs root or CAP_SYS_ADMIN, as CI has")
    try:
        yield home
    finally:
        subprocess.run(["umount", str(home)], check=True)


def _catalog(path: Path, count: int) -> Path:
    with path.open("w") as handle:
        for i, record in enumerate(demo_slice(count)):
            handle.write(json.dumps({"id": f"p{i}", "title": record["title"][:60]}) + "\n")
    return path


def _shoprank(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "SHOPRANK_HOME": str(home),
           "SHOPRANK_STORE": "local", "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-c", CLI, *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_reindex_on_a_full_disk_fails_clearly_and_the_old_version_serves(
    small_home: Path, tmp_path: Path
) -> None:
    small = _catalog(tmp_path / "small.jsonl", 20)
    done = _shoprank(small_home, "reindex", "--catalog", str(small))
    assert done.returncode == 0, done.stdout + done.stderr
    index = small_home / "indexes" / "default"
    serving = (index / "CURRENT").read_text().strip()
    before = [h.product_id for h in LocalStore(index).search_bm25("women", 10)]
    free = os.statvfs(small_home).f_bavail

    big = _catalog(tmp_path / "big.jsonl", 2000)  # ~6 MB of vectors
    failed = _shoprank(small_home, "reindex", "--catalog", str(big))
    said = " ".join((failed.stdout + failed.stderr).split())
    assert failed.returncode == 1, said
    assert "Traceback" not in said
    assert (
        f"reindex failed, the serving index is unchanged: cannot write a new version of index "
        f"{index}: the disk is full (no space left on device)"
    ) in said

    assert (index / "CURRENT").read_text().strip() == serving
    reopened = LocalStore(index)
    assert reopened.count() == 20
    assert [h.product_id for h in reopened.search_bm25("women", 10)] == before
    assert sorted(p.name for p in index.iterdir()) == sorted(
        [".lock", ".rebuild.lock", "CURRENT", serving]
    ), (
        "the partial version is removed"
    )
    assert os.statvfs(small_home).f_bavail == free, "its space is free again"


def test_an_upsert_on_a_full_disk_fails_and_keeps_what_was_acknowledged(
    small_home: Path,
) -> None:
    store = LocalStore(small_home / "idx")
    encoder = HashEncoder(DIMENSION)
    products = [Product(id=f"p{i}", title=f"product {i}") for i in range(20)]
    store.replace_all(products, encoder.encode_texts([p.title for p in products]))
    first = Product(id="new-1", title="acknowledged before the disk filled")
    store.upsert([first], encoder.encode_texts([first.title]))
    log = store.root / store.version / UPDATES
    size = log.stat().st_size

    ballast = small_home / "ballast"
    with ballast.open("wb") as handle, pytest.raises(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()
    batch = [Product(id=f"new-{i}", title=f"refused {i}") for i in range(2, 12)]
    with pytest.raises(StoreError, match=f"{log}: the disk is full"):
        store.upsert(batch, encoder.encode_texts([p.title for p in batch]))
    assert log.stat().st_size == size, "the failed append is taken back off the log"

    ballast.unlink()
    reopened = LocalStore(store.root)
    assert reopened.get("new-1") == first and reopened.get("new-2") is None
    assert reopened.count() == 21
    vectors = encoder.encode_texts([batch[0].title])
    reopened.upsert(batch[:1], vectors)
    assert np.allclose(LocalStore(store.root).vectors(["new-2"])["new-2"], vectors[0])
