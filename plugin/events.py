"""Behaviour events (`POST /events`): validated as a batch, then folded into session states.

Impressions are kept in the session's raw event log (click models need what was shown, not
only what was clicked) and change no profile; clicks, add-to-carts and purchases update the
session's profile at once, so the session's next search sees them.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from indexer.schema import Product
from indexer.store import VectorStore
from plugin.errors import PluginError
from plugin.models import SessionId
from plugin.session_store import (
    Engagement,
    SessionState,
    SessionStore,
)

#: Events per `POST /events` request.
MAX_EVENTS_PER_REQUEST = 1000
#: Highest position an impression or click may name (positions start at 1).
MAX_POSITION = 1000
#: A client clock may run this far ahead of the server's before an event is "in the future".
CLOCK_SKEW = timedelta(seconds=60)
#: Events older than this are refused: they would have decayed to nothing.
MAX_EVENT_AGE = timedelta(days=30)

ProductId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: SessionId
    #: When it happened, with a time zone (ISO 8601, e.g. "2026-11-28T14:00:00Z").
    timestamp: AwareDatetime


class ImpressionItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    product_id: ProductId
    position: int = Field(ge=1, le=MAX_POSITION)


class ImpressionEvent(_Event):
    """The ranked results a shopper was shown, with the search's ``request_id``."""

    type: Literal["impression"]
    request_id: str = Field(min_length=1, max_length=128)
    query: str | None = Field(default=None, max_length=512)
    items: list[ImpressionItem] = Field(min_length=1, max_length=MAX_POSITION)


class _Engagement(_Event):
    product_id: ProductId
    #: The product's rank in the results it was picked from, when it came from a search.
    position: int | None = Field(default=None, ge=1, le=MAX_POSITION)
    request_id: str | None = Field(default=None, min_length=1, max_length=128)


class ClickEvent(_Engagement):
    type: Literal["click"]


class AddToCartEvent(_Engagement):
    type: Literal["add_to_cart"]


class PurchaseEvent(_Engagement):
    type: Literal["purchase"]


Event = Annotated[
    ImpressionEvent | ClickEvent | AddToCartEvent | PurchaseEvent, Field(discriminator="type")
]
EngagementEvent = ClickEvent | AddToCartEvent | PurchaseEvent


class EventBatch(BaseModel):
    """``POST /events`` body for many events; one event may also be posted on its own."""

    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class RecordResult(BaseModel):
    accepted: int = Field(description="events stored")
    sessions: int = Field(description="sessions whose state changed or whose log grew")


class EventValidationError(PluginError):
    """One or more events are impossible; nothing of the batch was stored."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class EventRecorder:
    """Validates a batch of events against the catalog, then updates each session once."""

    store: VectorStore
    sessions: SessionStore
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def validate(self, events: Sequence[Event]) -> dict[str, Product]:
        """Raise `EventValidationError` listing every problem (at most 20), naming each event
        by its index in the batch and the field at fault; returns the products the events
        name."""
        problems: list[str] = []
        now = self.clock()
        for index, event in enumerate(events):
            where = f"events[{index}]"
            if event.timestamp > now + CLOCK_SKEW:
                problems.append(
                    f"{where}.timestamp {event.timestamp.isoformat()} is in the future (server "
                    f"time {now.isoformat()}, allowed clock skew {CLOCK_SKEW.seconds} s)"
                )
            elif event.timestamp < now - MAX_EVENT_AGE:
                problems.append(
                    f"{where}.timestamp {event.timestamp.isoformat()} is older than "
                    f"{MAX_EVENT_AGE.days} days"
                )
            if isinstance(event, ImpressionEvent):
                problems += _impression_problems(where, event)
        ids = list(dict.fromkeys(_product_ids(events)))
        known = self.store.get_many(ids) if ids else {}
        for index, event in enumerate(events):
            items = (
                [(f"items[{i}].product_id", item.product_id) for i, item in enumerate(event.items)]
                if isinstance(event, ImpressionEvent)
                else [("product_id", event.product_id)]
            )
            for field, pid in items:
                if pid not in known:
                    problems.append(f"events[{index}].{field}: no product with id {pid!r}")
        if problems:
            more = len(problems) - 20
            raise EventValidationError(
                problems[:20] + ([f"... and {more} more problems"] if more > 0 else [])
            )
        return known

    def record(self, events: Sequence[Event]) -> RecordResult:
        """Validate every event, then store them: all of the batch or, on bad input, none."""
        products = self.validate(events)
        engaged = [event for event in events if not isinstance(event, ImpressionEvent)]
        ids = list(dict.fromkeys(event.product_id for event in engaged))
        vectors = self.store.vectors(ids) if ids else {}
        by_session: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            by_session[event.session_id].append(event)
        for session_id, session_events in by_session.items():
            engagements = [
                Engagement(
                    kind=event.type,
                    product_id=event.product_id,
                    timestamp=event.timestamp.timestamp(),
                    vector=vectors[event.product_id],
                    brand=products[event.product_id].brand,
                    category=tuple(products[event.product_id].category),
                    price=products[event.product_id].price,
                )
                for event in session_events
                if not isinstance(event, ImpressionEvent) and event.product_id in vectors
            ]
            engagements.sort(key=lambda engagement: engagement.timestamp)
            self.sessions.update(
                session_id,
                _applying(session_id, engagements),
                [event.model_dump(mode="json") for event in session_events],
            )
        return RecordResult(accepted=len(events), sessions=len(by_session))


def _applying(session_id: str, engagements: list[Engagement]) -> Callable[
    [SessionState | None], SessionState
]:
    def update(state: SessionState | None) -> SessionState:
        state = state or SessionState.empty(session_id)
        for engagement in engagements:
            state = state.applied(engagement)
        return state

    return update


def _impression_problems(where: str, event: ImpressionEvent) -> list[str]:
    problems = []
    positions = Counter(item.position for item in event.items)
    repeated = sorted(p for p, times in positions.items() if times > 1)
    if repeated:
        problems.append(f"{where}.items: position {repeated[0]} is given to more than one product")
    ids = Counter(item.product_id for item in event.items)
    twice = sorted(pid for pid, times in ids.items() if times > 1)
    if twice:
        problems.append(f"{where}.items: product {twice[0]!r} is shown at more than one position")
    return problems


def _product_ids(events: Sequence[Event]) -> list[str]:
    ids: list[str] = []
    for event in events:
        if isinstance(event, ImpressionEvent):
            ids += [item.product_id for item in event.items]
        else:
            ids.append(event.product_id)
    return ids


def session_summary(state: SessionState | None, events: list[dict[str, Any]]) -> dict[str, Any]:
    """What `GET /sessions/{id}` shows: the profile's strength, top affinities, recent events."""
    if state is None:
        return {"history": False, "events": events}
    band = state.price_band()
    return {
        "history": state.has_history,
        "engagements": state.engagements,
        "updated_at": datetime.fromtimestamp(state.updated_at, UTC).isoformat(),
        "weight": round(state.weight, 4),
        "brands": _top(state.brands),
        "categories": _top(state.categories),
        "price_band": None if band is None else _price_range(*band),
        "purchased": list(state.purchased),
        "events": events,
    }


def _top(weights: dict[str, float], n: int = 10) -> dict[str, float]:
    total = sum(weights.values()) or 1.0
    best = sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:n]
    return {key: round(value / total, 4) for key, value in best}


def _price_range(mean: float, spread: float) -> list[float]:
    return [round(math.expm1(mean - spread), 2), round(math.expm1(mean + spread), 2)]
