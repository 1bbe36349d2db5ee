"""Builds the pipeline's collaborators from settings. Nothing here runs at import time."""

from __future__ import annotations

from indexer.encoder import BiEncoder
from indexer.local_store import LocalStore
from indexer.opensearch_store import OpenSearchStore
from indexer.settings import IndexerSettings
from indexer.store import VectorStore
from plugin.errors import PluginError
from plugin.pipeline import SearchPipeline
from plugin.settings import Settings
from reranker.base import NoReranker, Reranker
from reranker.cross_encoder import InProcessCrossEncoder


def build_encoder(settings: IndexerSettings) -> BiEncoder:
    return BiEncoder(
        settings.encoder_path,
        batch_size=settings.encode_batch_size,
        max_seq_length=settings.encoder_max_seq_length,
        query_cache_size=settings.query_cache_size,
    )


def build_store(settings: Settings) -> VectorStore:
    if settings.indexer.store == "opensearch":
        return OpenSearchStore(settings.indexer, settings.index)
    return LocalStore(settings.index_root)


def build_reranker(settings: Settings) -> Reranker:
    if settings.reranker == "none":
        return NoReranker()
    if settings.reranker_checkpoint is None:
        raise PluginError(
            "reranker 'cross-encoder' needs a checkpoint folder "
            "(--checkpoint DIR or SHOPRANK_RERANKER_CHECKPOINT)"
        )
    return InProcessCrossEncoder(settings.reranker_checkpoint)


def build_pipeline(settings: Settings) -> SearchPipeline:
    return SearchPipeline(
        build_store(settings),
        build_encoder(settings.indexer),
        build_reranker(settings),
        candidates=settings.candidates,
        rerank_window=settings.rerank_window,
    )
