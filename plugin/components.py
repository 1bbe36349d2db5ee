"""Builds the pipeline's collaborators from settings. Nothing here runs at import time."""

from __future__ import annotations

import logging
from pathlib import Path

from indexer.encoder import BiEncoder
from indexer.errors import IndexerError
from indexer.local_store import LocalStore
from indexer.model_files import MODEL_CARD, folder_digest
from indexer.onnx_files import EXPORT_FORMAT, ONNX_CARD
from indexer.opensearch_store import OpenSearchStore
from indexer.settings import IndexerSettings
from indexer.store import VectorStore
from plugin.errors import PluginError
from plugin.fairness.exposure_store import InMemoryExposureStore
from plugin.pipeline import SearchPipeline
from plugin.search_plan import FinalRankers, SearchSettings
from plugin.session_store import InMemorySessionStore, SessionStore
from plugin.settings import Settings
from reranker.base import NoReranker, Reranker
from reranker.cross_encoder import DEFAULT_MAX_LENGTH, InProcessCrossEncoder, read_model_card
from reranker.errors import RerankerError
from reranker.linear_ranker import LinearRanker
from reranker.onnx_cross_encoder import OnnxCrossEncoder
from reranker.onnx_export import export_onnx
from reranker.triton import TritonReranker

logger = logging.getLogger(__name__)

#: Tuned artifacts that ship with the package (see README, "Tuned defaults").
ARTIFACTS = Path(__file__).parent / "artifacts"
PACKAGED_FINAL_RANKER = ARTIFACTS / "final-ranker.json"
#: The packaged final stage without the cross-encoder's feature: it ranks when the packaged
#: one cannot (no reranker configured, reranking turned off, the reranker down).
PACKAGED_RETRIEVAL_RANKER = ARTIFACTS / "final-ranker-retrieval.json"
#: The shipped cross-encoder (LoRA on the packaged MiniLM, see its README.md).
PACKAGED_RERANKER = ARTIFACTS / "reranker"


def reranker_checkpoint(settings: Settings) -> Path | None:
    """The cross-encoder folder to serve: the configured one, else the packaged one."""
    if settings.reranker_checkpoint is not None:
        return settings.reranker_checkpoint
    return PACKAGED_RERANKER if (PACKAGED_RERANKER / MODEL_CARD).is_file() else None


def onnx_reranker_folder(checkpoint: Path, cache_dir: Path) -> Path:
    """``checkpoint`` itself when it is an ONNX export, else its export under ``cache_dir``,
    made on first use (INT8 and fp32) and keyed by the checkpoint's content."""
    if (checkpoint / ONNX_CARD).is_file():
        return checkpoint
    card = read_model_card(checkpoint)  # its max_length is the export's: part of the key
    length = card.max_length if card else DEFAULT_MAX_LENGTH
    key = f"{folder_digest(checkpoint)[:16]}-l{length}-f{EXPORT_FORMAT}"
    folder = cache_dir / f"cross-encoder-{key}"
    if not (folder / ONNX_CARD).is_file():
        logger.info("exporting cross-encoder %s to ONNX under %s (once)", checkpoint, folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            export_onnx(checkpoint, folder)
        except (RerankerError, OSError):
            if not (folder / ONNX_CARD).is_file():  # another process may have finished first
                raise
    return folder


def build_encoder(settings: IndexerSettings) -> BiEncoder:
    return BiEncoder(
        settings.encoder_path,
        batch_size=settings.encode_batch_size,
        max_seq_length=settings.encoder_max_seq_length,
        query_cache_size=settings.query_cache_size,
        query_backend=settings.query_backend,
        document_backend=settings.document_backend,
        onnx_cache_dir=settings.onnx_cache_dir,
    )


def build_store(settings: Settings) -> VectorStore:
    if settings.indexer.store == "opensearch":
        return OpenSearchStore(settings.indexer, settings.index)
    return LocalStore(settings.index_root)


def limit_blas_threads(threads: int) -> None:
    """Cap this process's BLAS thread pools (numpy's OpenBLAS) at ``threads``; 0 leaves them."""
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")


def build_reranker(settings: Settings) -> Reranker:
    if settings.reranker == "none":
        return NoReranker()
    if settings.reranker == "triton":
        try:
            return TritonReranker(
                settings.triton_url, checkpoint=reranker_checkpoint(settings),
                timeout_seconds=settings.triton_timeout_seconds,
                max_length=settings.reranker_max_length,
            )
        except RerankerError as e:
            raise PluginError(f"reranker triton: {e}") from e
    checkpoint = reranker_checkpoint(settings)
    if checkpoint is None:
        raise PluginError(
            f"reranker {settings.reranker!r} needs a checkpoint folder "
            f"(--checkpoint DIR or SHOPRANK_RERANKER_CHECKPOINT); none is packaged at "
            f"{PACKAGED_RERANKER}"
        )
    if settings.reranker == "onnx":
        try:
            folder = onnx_reranker_folder(checkpoint, settings.indexer.onnx_cache_dir)
        except (RerankerError, IndexerError, OSError) as e:
            raise PluginError(f"reranker onnx: {e}") from e
        return OnnxCrossEncoder(
            folder, precision=settings.reranker_precision,
            max_length=settings.reranker_max_length,
        )
    return InProcessCrossEncoder(checkpoint, max_length=settings.reranker_max_length)


def build_final_ranker(settings: Settings) -> LinearRanker | None:
    """The configured final stage; the packaged default only when it exists."""
    if settings.final_ranker == "none":
        return None
    if settings.final_ranker == "default":
        return LinearRanker.load(PACKAGED_FINAL_RANKER) if PACKAGED_FINAL_RANKER.is_file() else None
    return LinearRanker.load(Path(settings.final_ranker))


def build_fallback_final_ranker(settings: Settings) -> LinearRanker | None:
    """The packaged retrieval-only final stage, beside the packaged default only."""
    if settings.final_ranker != "default" or not PACKAGED_RETRIEVAL_RANKER.is_file():
        return None
    return LinearRanker.load(PACKAGED_RETRIEVAL_RANKER)


def build_session_store(settings: Settings) -> SessionStore:
    if settings.session_store == "redis":
        # Imported here: the redis client is needed only by servers that use Redis.
        from plugin.redis_session_store import RedisSessionStore

        return RedisSessionStore(settings.redis_url, ttl_seconds=settings.session_ttl_seconds)
    return InMemorySessionStore(
        max_sessions=settings.max_sessions, ttl_seconds=settings.session_ttl_seconds
    )


def build_search_settings(settings: Settings) -> SearchSettings:
    """The pipeline's knobs, from the server's settings."""
    return SearchSettings(
        candidates=settings.candidates,
        rerank_window=settings.rerank_window,
        min_rerank_window=settings.min_rerank_window,
        rerank_budget_ms=settings.rerank_budget_ms,
        personalization_weight=settings.personalization_weight,
        out_of_stock=settings.out_of_stock,
        fairness=settings.fairness,
        concurrent_retrieval=settings.concurrent_retrieval,
        max_concurrent_reranks=settings.max_concurrent_reranks,
    )


def build_final_rankers(settings: Settings, *, has_reranker: bool) -> FinalRankers:
    """The final stage and its fallback, for a server with or without a reranker."""
    rankers = FinalRankers(build_final_ranker(settings), build_fallback_final_ranker(settings))
    if not rankers.needs_rerank or has_reranker:
        return rankers
    if settings.final_ranker == "default":
        # the packaged ranker needs the packaged reranker: its retrieval-only twin ranks
        return FinalRankers(rankers.fallback)
    raise PluginError(
        f"final ranker {settings.final_ranker} uses cross-encoder scores: "
        "start with --reranker onnx or cross-encoder, or --final-ranker none"
    )


def build_pipeline(settings: Settings) -> SearchPipeline:
    reranker = build_reranker(settings)
    return SearchPipeline(
        build_store(settings),
        build_encoder(settings.indexer),
        reranker,
        rankers=build_final_rankers(
            settings, has_reranker=not isinstance(reranker, NoReranker)
        ),
        sessions=build_session_store(settings),
        exposure=InMemoryExposureStore(window=settings.fairness_window),
        settings=build_search_settings(settings),
    )
