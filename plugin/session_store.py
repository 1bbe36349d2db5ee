"""What a shopping session has done, and where it is kept.

A `SessionState` is a small, decayed summary of a session's engagement: a profile vector (the
weighted sum of the embeddings of the products it clicked, put in its cart or bought), brand and
category affinities, the price band it engaged with and what it bought. Events older than a few
half-lives fade out; nothing is recomputed in a batch job.

The `SessionStore` protocol has two implementations: `InMemorySessionStore` (the embedded
default, bounded, with a TTL) and `plugin.redis_session_store.RedisSessionStore` (shared by
every server process). Both keep each session's recent raw events, impressions included, for
click models.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

EngagementKind = Literal["click", "add_to_cart", "purchase"]

#: How much one engagement of each kind counts (an impression alone counts nothing).
ENGAGEMENT_WEIGHTS: dict[str, float] = {"click": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
#: An engagement counts half as much this many seconds later.
HALF_LIFE_SECONDS = 1800.0
#: Raw events kept per session (the oldest go first).
MAX_EVENTS_PER_SESSION = 1000
#: Purchased ids kept per session (recommendations leave them out).
MAX_PURCHASED = 200
#: Affinity entries kept per session (the weakest go first).
MAX_AFFINITIES = 50


class SessionStoreError(Exception):
    """The session store cannot be reached or holds something unreadable."""


@dataclass(frozen=True)
class Engagement:
    """One click, add-to-cart or purchase, with what the profile needs of its product."""

    kind: EngagementKind
    product_id: str
    timestamp: float  #: seconds since the epoch
    vector: npt.NDArray[np.float32]  #: the product's L2-normalised embedding
    brand: str | None = None
    category: tuple[str, ...] = ()
    price: float | None = None


def _decay(seconds: float, half_life: float) -> float:
    return float(0.5 ** (max(seconds, 0.0) / half_life))


@dataclass(frozen=True)
class SessionState:
    """A session's decayed engagement; every sum is as of ``updated_at``.

    >>> state = SessionState.empty("s1").applied(engagement)
    >>> state.weight_at(state.updated_at)
    1.0
    """

    session_id: str
    updated_at: float = 0.0  #: epoch seconds of the newest engagement applied
    weight: float = 0.0  #: the decayed sum of engagement weights
    profile: npt.NDArray[np.float32] | None = None  #: decayed weighted sum of embeddings
    brands: dict[str, float] = field(default_factory=dict)  #: lower-cased brand -> weight
    categories: dict[str, float] = field(default_factory=dict)  #: lower-cased level -> weight
    #: decayed weight, weighted sum and weighted sum of squares of log(1 + price)
    price_weight: float = 0.0
    log_price_sum: float = 0.0
    log_price_squares: float = 0.0
    purchased: tuple[str, ...] = ()
    engagements: int = 0  #: how many engagements were applied, ever

    @classmethod
    def empty(cls, session_id: str) -> SessionState:
        return cls(session_id)

    @property
    def has_history(self) -> bool:
        return self.engagements > 0 and self.weight > 0

    def decay_factor(self, at: float, half_life: float = HALF_LIFE_SECONDS) -> float:
        """How much of the stored sums is left at time ``at``."""
        return _decay(at - self.updated_at, half_life)

    def weight_at(self, at: float, half_life: float = HALF_LIFE_SECONDS) -> float:
        return self.weight * self.decay_factor(at, half_life)

    def profile_direction(self) -> npt.NDArray[np.float32] | None:
        """The profile as a unit vector (decay scales it, so the direction does not age)."""
        if self.profile is None:
            return None
        norm = float(np.linalg.norm(self.profile))
        return None if norm == 0 else (self.profile / norm).astype(np.float32)

    def price_band(self) -> tuple[float, float] | None:
        """Mean and spread of log(1 + price) of the engaged products; None without prices."""
        if self.price_weight <= 0:
            return None
        mean = self.log_price_sum / self.price_weight
        variance = max(self.log_price_squares / self.price_weight - mean * mean, 0.0)
        return mean, math.sqrt(variance)

    def applied(
        self, engagement: Engagement, half_life: float = HALF_LIFE_SECONDS
    ) -> SessionState:
        """This state with one more engagement. Engagements may arrive out of order: an older
        one is added with its own decay instead of moving the clock back."""
        weight = ENGAGEMENT_WEIGHTS[engagement.kind]
        now = max(self.updated_at, engagement.timestamp)
        old = _decay(now - self.updated_at, half_life) if self.engagements else 0.0
        new = weight * _decay(now - engagement.timestamp, half_life)
        vector = engagement.vector.astype(np.float32)
        profile = vector * new if self.profile is None else self.profile * old + vector * new
        brands = _scaled(self.brands, old)
        if engagement.brand:
            key = engagement.brand.casefold()
            brands[key] = brands.get(key, 0.0) + new
        categories = _scaled(self.categories, old)
        for level in dict.fromkeys(level.casefold() for level in engagement.category):
            categories[level] = categories.get(level, 0.0) + new
        price_weight = self.price_weight * old
        log_sum, log_squares = self.log_price_sum * old, self.log_price_squares * old
        if engagement.price is not None:
            log_price = math.log1p(engagement.price)
            price_weight += new
            log_sum += new * log_price
            log_squares += new * log_price * log_price
        purchased = self.purchased
        if engagement.kind == "purchase" and engagement.product_id not in purchased:
            purchased = (*purchased, engagement.product_id)[-MAX_PURCHASED:]
        return replace(
            self,
            updated_at=now,
            weight=self.weight * old + new,
            profile=profile.astype(np.float32),
            brands=_strongest(brands),
            categories=_strongest(categories),
            price_weight=price_weight,
            log_price_sum=log_sum,
            log_price_squares=log_squares,
            purchased=purchased,
            engagements=self.engagements + 1,
        )

    # -- serialisation (the Redis store keeps this JSON) -----------------------------------

    def to_json(self) -> dict[str, Any]:
        profile = None
        if self.profile is not None:
            profile = base64.b64encode(self.profile.astype("<f4").tobytes()).decode("ascii")
        return {
            "session_id": self.session_id,
            "updated_at": self.updated_at,
            "weight": self.weight,
            "profile": profile,
            "brands": self.brands,
            "categories": self.categories,
            "price_weight": self.price_weight,
            "log_price_sum": self.log_price_sum,
            "log_price_squares": self.log_price_squares,
            "purchased": list(self.purchased),
            "engagements": self.engagements,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionState:
        try:
            profile = None
            if data.get("profile"):
                raw = base64.b64decode(data["profile"])
                profile = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            return cls(
                session_id=str(data["session_id"]),
                updated_at=float(data["updated_at"]),
                weight=float(data["weight"]),
                profile=profile,
                brands={str(k): float(v) for k, v in data["brands"].items()},
                categories={str(k): float(v) for k, v in data["categories"].items()},
                price_weight=float(data["price_weight"]),
                log_price_sum=float(data["log_price_sum"]),
                log_price_squares=float(data["log_price_squares"]),
                purchased=tuple(str(pid) for pid in data["purchased"]),
                engagements=int(data["engagements"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SessionStoreError(f"unreadable session state: {e}") from e


def _scaled(weights: Mapping[str, float], factor: float) -> dict[str, float]:
    return {key: value * factor for key, value in weights.items()}


def _strongest(weights: dict[str, float]) -> dict[str, float]:
    if len(weights) <= MAX_AFFINITIES:
        return weights
    kept = sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:MAX_AFFINITIES]
    return dict(kept)


#: A state update: the state so far (None for a new session) to the new state.
StateUpdate = Callable[[SessionState | None], SessionState]


@runtime_checkable
class SessionStore(Protocol):
    """Where session states and their raw events live, with a TTL since the last write."""

    @property
    def location(self) -> str:
        """Where the sessions live, for messages."""
        ...

    def get(self, session_id: str) -> SessionState | None:
        """The session's state; None for a session never seen or expired."""
        ...

    def update(
        self, session_id: str, update: StateUpdate, events: Sequence[Mapping[str, Any]]
    ) -> SessionState:
        """Atomically replace the state with ``update(state)`` and append ``events`` (JSON
        objects) to the session's log; returns the new state. Concurrent updates of one
        session never lose each other's changes."""
        ...

    def events(self, session_id: str, limit: int = MAX_EVENTS_PER_SESSION) -> list[dict[str, Any]]:
        """The session's most recent raw events, oldest first."""
        ...

    def delete(self, session_id: str) -> bool:
        """Forget a session; returns whether it existed."""
        ...

    def ping(self) -> None:
        """Raise `SessionStoreError` when the store cannot be reached."""
        ...

    def close(self) -> None: ...


@dataclass
class _Entry:
    state: SessionState
    events: list[dict[str, Any]]
    touched: float


class InMemorySessionStore:
    """Sessions in this process's memory: at most ``max_sessions`` (the least recently written
    go first), each forgotten ``ttl_seconds`` after its last write. Thread-safe."""

    def __init__(
        self,
        *,
        max_sessions: int = 100_000,
        ttl_seconds: float = 86_400.0,
        max_events: int = MAX_EVENTS_PER_SESSION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1 or ttl_seconds <= 0 or max_events < 1:
            raise ValueError(
                "InMemorySessionStore needs max_sessions >= 1, ttl_seconds > 0, max_events >= 1"
            )
        self.max_sessions = max_sessions
        self.ttl_seconds = ttl_seconds
        self.max_events = max_events
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return "memory"

    def _live(self, session_id: str) -> _Entry | None:
        entry = self._entries.get(session_id)
        if entry is not None and self._clock() - entry.touched > self.ttl_seconds:
            del self._entries[session_id]
            return None
        return entry

    def get(self, session_id: str) -> SessionState | None:
        with self._lock:
            entry = self._live(session_id)
            return None if entry is None else entry.state

    def update(
        self, session_id: str, update: StateUpdate, events: Sequence[Mapping[str, Any]]
    ) -> SessionState:
        with self._lock:
            entry = self._live(session_id)
            state = update(None if entry is None else entry.state)
            kept = ([] if entry is None else entry.events) + [dict(event) for event in events]
            self._entries[session_id] = _Entry(state, kept[-self.max_events:], self._clock())
            self._entries.move_to_end(session_id)
            while len(self._entries) > self.max_sessions:
                self._entries.popitem(last=False)
            return state

    def events(self, session_id: str, limit: int = MAX_EVENTS_PER_SESSION) -> list[dict[str, Any]]:
        with self._lock:
            entry = self._live(session_id)
            return [] if entry is None else [dict(event) for event in entry.events[-limit:]]

    def delete(self, session_id: str) -> bool:
        with self._lock:
            return self._entries.pop(session_id, None) is not None

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
