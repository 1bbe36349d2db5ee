"""Exceptions raised by the reranker package."""

from __future__ import annotations


class RerankerError(Exception):
    """Base class for every error the reranker package raises."""


class CheckpointError(RerankerError):
    """A reranker checkpoint folder is missing or unreadable."""


class EvaluationInputError(RerankerError):
    """A queries, qrels or gains input is malformed."""


class TuningError(RerankerError):
    """Tuning inputs are unusable, or training failed."""


class RerankerUnavailableError(RerankerError):
    """A remote reranker did not answer: timeout, unreachable, or its circuit is open.

    Search treats this as "rerank skipped" and answers in retrieval order (degraded).
    """
