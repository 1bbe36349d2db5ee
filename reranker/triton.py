"""`TritonReranker`: the cross-encoder served by a Triton Inference Server.

The client tokenizes (see `reranker.triton_contract` for why) and sends token ids over HTTP
with tritonclient's asyncio client. One event loop in a background thread owns that client,
so its connection pool is reused by every call while the `Reranker` protocol stays synchronous.

A remote model can be slow or gone. Every call has a timeout, and a `CircuitBreaker` stops
calling a server that keeps failing, so a dead server costs one timeout per ``reset_seconds``
and not one per query. Failures surface as `RerankerUnavailableError`; the search pipeline
answers those in retrieval order, marked ``degraded`` (it fails open).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from indexer.circuit import CircuitBreaker
from indexer.model_files import packaged_model_path
from indexer.model_loading import prepare_offline_loading
from reranker.cross_encoder import DEFAULT_MAX_LENGTH, read_model_card
from reranker.errors import RerankerError, RerankerUnavailableError
from reranker.triton_contract import INPUTS, MAX_PAIRS, MAX_SEQUENCE_LENGTH, MODEL_NAME, OUTPUT

if TYPE_CHECKING:
    from tritonclient.http.aio import InferenceServerClient

logger = logging.getLogger(__name__)
T = TypeVar("T")


class TritonReranker:
    """Scores pairs with the ``shoprank_reranker`` model on a Triton server.

    ``checkpoint`` (optional) is the tuned artifact the server runs; its model card gives the
    ``max_length`` the in-process reranker would use, so both score the same tokens. All our
    checkpoints share the packaged model's vocabulary, so the packaged tokenizer serves them all.
    """

    def __init__(
        self,
        url: str,
        *,
        checkpoint: Path | None = None,
        max_length: int | None = None,
        timeout_seconds: float = 2.0,
        breaker: CircuitBreaker | None = None,
        model_name: str = MODEL_NAME,
    ) -> None:
        card = read_model_card(checkpoint) if checkpoint is not None else None
        self.max_length = max_length or (card.max_length if card else DEFAULT_MAX_LENGTH)
        if not 1 <= self.max_length <= MAX_SEQUENCE_LENGTH:
            raise RerankerError(
                f"max_length {self.max_length} is outside 1..{MAX_SEQUENCE_LENGTH}"
            )
        scheme, _, rest = url.rpartition("://")
        if scheme not in ("", "http") or not rest:
            raise RerankerError(
                f"Triton URL {url!r}: give http://host:port (https is not supported yet)"
            )
        self.url = rest
        self.model_name = model_name
        self.timeout_seconds = timeout_seconds
        self.breaker = breaker or CircuitBreaker()
        self._tokenizer: Any = None
        self._client: InferenceServerClient | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="triton-client", daemon=True
        )
        self._thread.start()

    @property
    def name(self) -> str:
        return f"triton:{self.model_name}@{self.url}"

    @property
    def circuit_open(self) -> bool:
        """Whether the breaker is skipping the server (open, or half-open awaiting a trial)."""
        return self.breaker.state != "closed"

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            prepare_offline_loading()
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(
                str(packaged_model_path()), local_files_only=True
            )
        return self._tokenizer

    def encode(self, query: str, texts: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
        """The model's input tensors for these pairs, as sentence-transformers tokenizes them."""
        tokens = self.tokenizer(
            [query] * len(texts), list(texts), padding=True, truncation="longest_first",
            max_length=self.max_length, return_tensors="np",
        )
        return {spec.name: np.ascontiguousarray(tokens[spec.name], dtype=np.int64)
                for spec in INPUTS}

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        if not self.breaker.allows():
            raise RerankerUnavailableError(
                f"reranker {self.name} is skipped for {self.breaker.reset_seconds:g} s after "
                f"{self.breaker.threshold} failures in a row (circuit open)",
                cause="circuit_open",
            )
        scores: list[float] = []
        try:
            for start in range(0, len(texts), MAX_PAIRS):
                tensors = self.encode(query, texts[start : start + MAX_PAIRS])
                scores += self._run(self._infer(tensors))
        except BaseException:
            # Whatever went wrong, a half-open trial is over: never leave the breaker stuck.
            self.breaker.failed()
            raise
        self.breaker.succeeded()
        return scores

    def _run(self, call: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        timeout = timeout or self.timeout_seconds
        if self._loop.is_closed():
            call.close()
            raise RerankerUnavailableError(f"reranker {self.name} is closed")
        future = asyncio.run_coroutine_threadsafe(call, self._loop)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout as e:
            future.cancel()
            raise RerankerUnavailableError(
                f"reranker {self.name} did not answer within {timeout:g} s", cause="timeout"
            ) from e
        except RerankerUnavailableError:
            raise
        except Exception as e:  # tritonclient and aiohttp raise many kinds; all mean "no answer"
            raise RerankerUnavailableError(f"reranker {self.name} failed: {e}") from e

    async def _infer(self, tensors: dict[str, np.ndarray[Any, Any]]) -> list[float]:
        from tritonclient.http.aio import InferInput, InferRequestedOutput

        inputs = []
        for spec in INPUTS:
            item = InferInput(spec.name, list(tensors[spec.name].shape), spec.dtype)
            item.set_data_from_numpy(tensors[spec.name], binary_data=True)
            inputs.append(item)
        result = await self._connection().infer(
            self.model_name, inputs, outputs=[InferRequestedOutput(OUTPUT.name, binary_data=True)],
        )
        values = result.as_numpy(OUTPUT.name)
        if values is None:
            raise RerankerUnavailableError(f"reranker {self.name} returned no {OUTPUT.name!r}")
        return [float(value) for value in values.reshape(-1)]

    def _connection(self) -> InferenceServerClient:
        """The one client; created inside the event loop, as aiohttp requires."""
        if self._client is None:
            from tritonclient.http.aio import InferenceServerClient

            # No session-wide limit: each call's own timeout is enforced in `_run`, and a model
            # load may take far longer than a rerank.
            self._client = InferenceServerClient(self.url, conn_timeout=None)
        return self._client

    def ready(self) -> bool:
        """Whether the server says the model is ready (never raises)."""

        async def check() -> bool:
            return bool(await self._connection().is_model_ready(self.model_name))

        try:
            return self._run(check())
        except RerankerUnavailableError:
            return False

    def live(self) -> bool:
        """Whether the server answers at all (never raises)."""

        async def check() -> bool:
            return bool(await self._connection().is_server_live())

        try:
            return self._run(check())
        except RerankerUnavailableError:
            return False

    def load(self, version: int | None = None, timeout_seconds: float = 120.0) -> None:
        """Ask the server to (re)load the model, which picks up a newly exported version; with
        ``version``, fail unless that version is ready afterwards."""

        async def load() -> bool:
            client = self._connection()
            await client.load_model(self.model_name)
            wanted = "" if version is None else str(version)
            return bool(await client.is_model_ready(self.model_name, wanted))

        if not self._run(load(), timeout_seconds):
            raise RerankerUnavailableError(
                f"the server loaded {self.model_name} but version {version} is not ready: "
                "is it serving another model repository, or a newer version?"
            )

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._client is not None:
            client, self._client = self._client, None
            try:
                asyncio.run_coroutine_threadsafe(client.close(), self._loop).result(timeout=5)
            except Exception:  # closing a client of a dead server must not fail shutdown
                logger.debug("closing the Triton client failed", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
