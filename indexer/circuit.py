"""`CircuitBreaker`: stop calling a server that keeps failing, so that a dead or hung server
costs one timeout per ``reset_seconds`` and not one per request. The Triton reranker and the
OpenSearch store each hold one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class CircuitBreaker:
    """Closed -> open after ``failures`` failures in a row; open -> one trial call after
    ``reset_seconds``; a success closes it again.

    >>> breaker = CircuitBreaker(failures=2, reset_seconds=30.0)
    >>> breaker.failed(); breaker.allows()
    True
    >>> breaker.failed(); breaker.allows()
    False
    """

    def __init__(self, *, failures: int = 3, reset_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._due() else "open"

    def _due(self) -> bool:
        return self._opened_at is not None and (
            self._clock() - self._opened_at >= self.reset_seconds
        )

    def allows(self) -> bool:
        """Whether a call may go out now; in half-open only one trial call at a time."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._due() and not self._trial_running:
                self._trial_running = True
                return True
            return False

    def succeeded(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._trial_running = 0, None, False

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_running = False
            if self._opened_at is not None or self._failures >= self.threshold:
                self._opened_at = self._clock()


class CircuitGuard:
    """Wraps the calls to one server in its `CircuitBreaker`.

    While the breaker is open a call is refused at once with ``refused()``. A call that raises
    ``failure`` (the server could not answer) counts as a failure, and ``opened()`` runs when
    that leaves the circuit open; any other outcome, an error the server answered with
    included, counts as a success. Calls made inside a call on the same
    thread pass straight through, so a nested call never competes with its own half-open
    trial.
    """

    def __init__(self, breaker: CircuitBreaker, failure: type[BaseException],
                 refused: Callable[[], BaseException],
                 opened: Callable[[], None] | None = None) -> None:
        self.breaker = breaker
        self._failure = failure
        self._refused = refused
        self._opened = opened
        self._inside = threading.local()

    @contextmanager
    def call(self) -> Iterator[None]:
        if getattr(self._inside, "value", False):
            yield
            return
        if not self.breaker.allows():
            raise self._refused()
        self._inside.value = True
        try:
            yield
        except self._failure:
            self.breaker.failed()
            if self._opened is not None and self.breaker.state != "closed":
                self._opened()
            raise
        except BaseException:
            self.breaker.succeeded()
            raise
        else:
            self.breaker.succeeded()
        finally:
            self._inside.value = False
