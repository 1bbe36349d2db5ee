"""First-stage retrieval over any `VectorStore`: BM25, vector, or both fused with RRF.

`HybridRetriever` is the one retriever: in hybrid mode its BM25 search runs in a worker while
the calling thread encodes the query and runs the vector search, so the two round trips
overlap. The fusion lives here, not in a store, so every store fuses the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from indexer.encoder import BiEncoder
from indexer.fusion import DEFAULT_RRF_K, reciprocal_rank_fusion
from indexer.store import Filters, RetrievalMode, ScoredId, VectorStore, check_encoder

QueryVector = npt.NDArray[np.float32]
#: Called with a step's name as the step ends (``load_encoder``, then ``encode``), so that a
#: caller's clock can time the steps apart.
Lap = Callable[[str], None]


@dataclass
class Candidate:
    """A retrieved product with the score each stage gave it (None: stage did not see it)."""

    product_id: str
    bm25: float | None = None
    vector: float | None = None
    fused: float | None = None
    bm25_rank: int | None = None
    vector_rank: int | None = None

    @property
    def retrieval_score(self) -> float:
        """The score that ordered this candidate in its retrieval mode."""
        for score in (self.fused, self.vector, self.bm25):
            if score is not None:
                return score
        return 0.0


@dataclass(frozen=True)
class Retrieval:
    """One query's candidates, best first, and the query vector they were found with."""

    candidates: list[Candidate]
    vector: QueryVector | None


class HybridRetriever:
    """BM25, vector or both (fused with RRF) over one store, the two searches at once.

    Without a ``vector`` a vector or hybrid retrieval encodes the query with ``encoder``
    (checked against the index's encoder first). ``concurrent`` runs hybrid mode's BM25 search
    in a worker thread beside the encoding and the vector search.

    >>> retriever = HybridRetriever(store, BiEncoder())
    >>> retriever.retrieve("hybrid", "usb c charger", 100).candidates[0].product_id
    """

    def __init__(
        self,
        store: VectorStore,
        encoder: BiEncoder | None = None,
        *,
        concurrent: bool = True,
        rrf_k: int = DEFAULT_RRF_K,
    ) -> None:
        self.store = store
        self.encoder = encoder
        self.concurrent = concurrent
        self.rrf_k = rrf_k
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def retrieve(
        self,
        mode: RetrievalMode,
        text: str,
        n: int,
        filters: Filters | None = None,
        *,
        vector: QueryVector | None = None,
        lap: Lap | None = None,
    ) -> Retrieval:
        """Up to ``n`` candidates, best first: hybrid takes the top ``n`` of each search and
        cuts the fused list to ``n``. ``lap`` hears when loading the encoder and encoding end."""
        lexical: Future[list[ScoredId]] | None = None
        if mode == "hybrid" and self.concurrent:
            lexical = self._executor().submit(self.store.search_bm25, text, n, filters)
        try:
            if mode != "bm25" and vector is None:
                vector = self._encode(text, lap)
            elif lap is not None:
                lap("load_encoder")
                lap("encode")
            semantic = self.store.search_vector(vector, n, filters) if vector is not None else []
        except BaseException:
            if lexical is not None:
                lexical.cancel()
            raise
        if lexical is not None:
            bm25 = lexical.result()
        else:
            bm25 = self.store.search_bm25(text, n, filters) if mode != "vector" else []
        return Retrieval(fuse(mode, bm25, semantic, n, rrf_k=self.rrf_k), vector)

    def _encode(self, text: str, lap: Lap | None) -> QueryVector:
        if self.encoder is None:
            raise ValueError("a vector or hybrid retrieval needs a query vector or an encoder")
        check_encoder(self.store, self.encoder)  # cheap: the stores cache the stamp
        load_query_model(self.encoder)
        if lap is not None:
            lap("load_encoder")
        vector = self.encoder.encode_query(text)
        if lap is not None:
            lap("encode")
        return vector

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=8,
                                                    thread_name_prefix="shoprank-bm25")
        return self._pool

    def close(self) -> None:
        """Stop the BM25 worker threads (the store is the caller's to close)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def load_query_model(encoder: BiEncoder) -> None:
    """Load what ``encoder.encode_query`` runs unless it is loaded (`BiEncoder.load_query_model`),
    so that loading is timed apart from encoding. Encoders of other kinds (test doubles) load
    nothing here."""
    if isinstance(encoder, BiEncoder):
        encoder.load_query_model()


def retrieve(
    store: VectorStore,
    mode: RetrievalMode,
    n: int,
    *,
    text: str,
    vector: QueryVector | None = None,
    filters: Filters | None = None,
    rrf_k: int = DEFAULT_RRF_K,
) -> list[Candidate]:
    """Return up to ``n`` candidates for a query already encoded (`HybridRetriever`, one
    search after the other).

    Hybrid takes the top ``n`` of each retriever and fuses them; the fused list is cut to ``n``.
    """
    if mode != "bm25" and vector is None:
        raise ValueError(f"mode {mode!r} needs a query vector")
    retriever = HybridRetriever(store, concurrent=False, rrf_k=rrf_k)
    return retriever.retrieve(mode, text, n, filters, vector=vector).candidates


def fuse(
    mode: RetrievalMode,
    lexical: Sequence[ScoredId],
    semantic: Sequence[ScoredId],
    n: int,
    *,
    rrf_k: int = DEFAULT_RRF_K,
) -> list[Candidate]:
    """The candidates of one mode from the two retrievers' lists (either may be empty);
    callers that run the two searches themselves, concurrently say, fuse with this."""
    by_id: dict[str, Candidate] = {}
    for rank, hit in enumerate(lexical, start=1):
        by_id[hit.product_id] = Candidate(hit.product_id, bm25=hit.score, bm25_rank=rank)
    for rank, hit in enumerate(semantic, start=1):
        candidate = by_id.setdefault(hit.product_id, Candidate(hit.product_id))
        candidate.vector, candidate.vector_rank = hit.score, rank
    if mode == "bm25":
        return [by_id[hit.product_id] for hit in lexical]
    if mode == "vector":
        return [by_id[hit.product_id] for hit in semantic]
    fused = reciprocal_rank_fusion(
        [[hit.product_id for hit in lexical], [hit.product_id for hit in semantic]], k=rrf_k
    )
    candidates = []
    for product_id, score in fused[:n]:
        candidate = by_id[product_id]
        candidate.fused = score
        candidates.append(candidate)
    return candidates
