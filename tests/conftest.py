from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.schema import Product
from plugin.demo import DEMO_CATALOG

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own SHOPRANK_HOME; nothing touches the user's indexes."""
    home = tmp_path / "home"
    monkeypatch.setenv("SHOPRANK_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Tests build pipelines without the packaged reranker unless they ask for it (the
    # default exports it to ONNX once per SHOPRANK_HOME); tests of the default unset this.
    monkeypatch.setenv("SHOPRANK_RERANKER", "none")
    return home


def make_product(pid: str, title: str, **fields: object) -> Product:
    return Product.model_validate({"id": pid, "title": title, **fields})


@pytest.fixture
def tiny_products() -> list[Product]:
    return [
        make_product("p1", "red running shoes", brand="Acme", category=["Shoes", "Running"],
                     price=50.0),
        make_product("p2", "blue running shoes", brand="Bolt", category=["Shoes", "Running"],
                     price=80.0),
        make_product("p3", "red summer dress", brand="Acme", category=["Clothing", "Dresses"],
                     price=30.0),
        make_product("p4", "trail running jacket", brand="Acme", category=["Clothing"],
                     price=120.0),
        make_product("p5", "running socks", brand=None, category=["Clothing", "Socks"]),
        make_product("p6", "coffee grinder", brand="Bolt", category=["Kitchen"], price=45.0),
    ]


def axis_vectors(count: int, dim: int = 8) -> np.ndarray:
    """Distinct unit vectors with known cosine similarities to axis queries."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def demo_slice(count: int) -> Iterator[dict[str, object]]:
    """The first ``count`` records of the bundled real catalog."""
    with gzip.open(DEMO_CATALOG, "rt", encoding="utf-8") as handle:
        for line in itertools.islice(handle, count):
            yield json.loads(line)
