"""Exceptions raised by the reranker package."""

from __future__ import annotations

from typing import Literal, get_args

#: Why a remote reranker gave no scores; the bounded set that metrics label degraded searches by.
UnavailableCause = Literal["timeout", "circuit_open", "failed"]
UNAVAILABLE_CAUSES: tuple[UnavailableCause, ...] = get_args(UnavailableCause)


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

    Search treats this as "rerank skipped" and answers in retrieval order (degraded);
    ``cause`` says which kind of failure it was.
    """

    def __init__(self, message: str, *, cause: UnavailableCause = "failed") -> None:
        super().__init__(message)
        self.cause: UnavailableCause = cause
