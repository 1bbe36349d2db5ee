"""The naive baseline of the benchmark suite: the same server with naive model calls.

    SHOPRANK_HOME=... python3 -m bench.naive_server --port 18081 --index NAME --checkpoint DIR

It serves `plugin.api.create_app` around the `plugin.pipeline.SearchPipeline` that `shoprank
serve` builds (same store, final stage, candidates, rerank window, settings from the same
environment), with its two model calls replaced by what a first implementation would write:

- the query embedding: sentence-transformers ``SentenceTransformer.encode([query])`` on every
  call, at the model's full length, no cache (`NaiveQueryEncoder`);
- reranking: ``sentence_transformers.CrossEncoder(checkpoint, max_length=512).predict(pairs)``
  on the request's pairs, fp32, the library's defaults otherwise (`NaiveCrossEncoder`).

The suite (bench/suite.py) also uses these two classes, and `load_naive_bi_encoder`, as the
baselines of its in-process measurements.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.encoder import BiEncoder
from indexer.model_loading import hf_transformer, load_bi_encoder
from indexer.vectors import Vectors
from plugin.components import build_pipeline
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder, SentenceTransformer

#: The cross-encoder's full length: what MiniLM's position embeddings allow.
NAIVE_MAX_LENGTH = 512


def load_naive_bi_encoder(path: Path | None = None) -> SentenceTransformer:
    """The bi-encoder as sentence-transformers loads it, truncating only at the model's maximum
    (its position embeddings: 512 for MiniLM; the library's default for this model is 256)."""
    model = load_bi_encoder(path)
    model.max_seq_length = int(hf_transformer(model).model.config.max_position_embeddings)
    return model


class NaiveQueryEncoder(BiEncoder):
    """A `BiEncoder` (same weights, so the index's encoder check passes) whose queries are
    encoded by one ``SentenceTransformer.encode([query])`` call each, never cached."""

    def __init__(self, model_path: Path | None = None, *, max_seq_length: int = 128) -> None:
        # max_seq_length only names the index's encoder (its stamp); queries are not truncated.
        super().__init__(model_path, max_seq_length=max_seq_length, query_cache_size=0)
        self._naive: SentenceTransformer | None = None
        self._naive_lock = threading.Lock()

    @property
    def naive_model(self) -> SentenceTransformer:
        if self._naive is None:
            with self._naive_lock:
                if self._naive is None:
                    self._naive = load_naive_bi_encoder(self._model_path)
        return self._naive

    def encode_query(self, text: str) -> Vectors:
        vector = self.naive_model.encode([text], convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(vector[0], dtype=np.float32)


class NaiveCrossEncoder:
    """A `reranker.base.Reranker`: ``CrossEncoder.predict`` on the request's pairs, fp32, at
    full length, batches of the library's default size (32), no bucketing of our own."""

    def __init__(self, checkpoint: Path, *, max_length: int = NAIVE_MAX_LENGTH) -> None:
        self.checkpoint = checkpoint
        self.max_length = max_length
        self._model: CrossEncoder | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"naive-cross-encoder:{self.checkpoint.name}"

    circuit_open = False

    @property
    def model(self) -> CrossEncoder:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from sentence_transformers import CrossEncoder

                    self._model = CrossEncoder(
                        str(self.checkpoint), max_length=self.max_length, device="cpu",
                        local_files_only=True,
                    )
        return self._model

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        scores = self.model.predict([(query, text) for text in texts], show_progress_bar=False)
        return [float(value) for value in scores]

    def close(self) -> None:
        self._model = None


def build_naive_pipeline(settings: Settings, checkpoint: Path) -> SearchPipeline:
    """`plugin.components.build_pipeline` with its two model-calling collaborators swapped for
    the naive ones; everything else (store, final stage, windows, concurrency) is the server's.

    The rerank-budget cost model is sized in the constructor from the built reranker: the suite
    runs without a budget, where it plays no part.
    """
    pipeline = build_pipeline(settings.model_copy(
        update={"reranker": "cross-encoder", "reranker_checkpoint": checkpoint}))
    pipeline.retriever.encoder = NaiveQueryEncoder(
        settings.indexer.encoder_path, max_seq_length=settings.indexer.encoder_max_seq_length
    )
    pipeline.reranking.reranker = NaiveCrossEncoder(checkpoint)
    return pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--index", required=True, help="index name under $SHOPRANK_HOME/indexes")
    parser.add_argument("--checkpoint", type=Path, required=True, help="cross-encoder folder")
    args = parser.parse_args()

    import uvicorn

    from plugin.api import create_app

    settings = Settings(host=args.host, port=args.port, index=args.index)
    app = create_app(settings, build_naive_pipeline(settings, args.checkpoint))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
