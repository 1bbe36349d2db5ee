"""A reindex to be killed midway: ``python -m tests.indexer.reindex_child STORE TARGET CATALOG
FRACTION`` rebuilds the index from CATALOG and, once FRACTION of it is written to the new
version, says ``written K of N`` on stdout and waits there for its SIGKILL.

STORE is ``local`` (TARGET: the index folder) or ``opensearch`` (TARGET: the index name, at
``SHOPRANK_OPENSEARCH_URL`` under the tests' alias prefix). The encoder is a stand-in that needs
no model: embedding writes nothing, the write phase is what a kill can tear.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.encoder_stamp import EncoderStamp
from indexer.indexing import reindex_catalog
from indexer.local_store import LocalStore
from indexer.opensearch_store import OpenSearchStore
from indexer.progress import IndexPhase
from tests.indexer.store_factories import opensearch_settings

DIMENSION = 8


class HashEncoder:
    """Each text's unit vector is drawn from a generator seeded by the text."""

    document_backend = "torch"
    stamp = EncoderStamp(identity="hash", fingerprint="hash", max_seq_length=8)

    def __init__(self, dimension: int = DIMENSION) -> None:
        self.dimension = dimension

    def encode_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            row = np.random.default_rng(seed).normal(size=self.dimension)
            rows.append(row / np.linalg.norm(row))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dimension)


class StopWhenWritten:
    """Blocks once ``fraction`` of the products are written to the new version."""

    def __init__(self, fraction: float) -> None:
        self._fraction = fraction
        self._phase: IndexPhase = "validate"
        self._total = 0
        self._done = 0

    def start(self, phase: IndexPhase, total: int | None) -> None:
        self._phase, self._total, self._done = phase, total or 0, 0

    def advance(self, items: int) -> None:
        self._done += items
        if self._phase == "write" and self._done >= self._fraction * self._total:
            print(f"written {self._done} of {self._total}", flush=True)
            time.sleep(600)  # the test kills this process here

    def finish(self) -> None:
        pass


def main(kind: str, target: str, catalog: str, fraction: str) -> None:
    store: LocalStore | OpenSearchStore
    if kind == "local":
        store = LocalStore(Path(target))
    else:
        store = OpenSearchStore(opensearch_settings(), target, dimension=DIMENSION)
    reindex_catalog(store, Path(catalog), HashEncoder(),  # type: ignore[arg-type]
                    progress=StopWhenWritten(float(fraction)))
    print("finished without being killed", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
