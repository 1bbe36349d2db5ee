"""Session states in Redis, shared by every server process.

Each session has two keys: ``{prefix}{<session_id>}:state`` holds its `SessionState` as JSON
and ``{prefix}{<session_id>}:events`` is a list of its most recent raw events (JSON objects,
oldest first, trimmed to ``max_events``). Every write sets both keys to expire ``ttl_seconds``
later. The braces are a Redis Cluster hash tag (both keys of a session share a slot, so the
transaction is allowed there), and since every key ends in its kind, no session id can name
another session's key.

An update is an optimistic transaction: WATCH the state, read it, compute the new state in
Python, then MULTI/EXEC the writes. EXEC fails when another process changed the state in
between, and the update starts over from the newer state, so no engagement is lost.

>>> store = RedisSessionStore("redis://127.0.0.1:6379/0", ttl_seconds=3600)
>>> store.update("s1", lambda state: (state or SessionState.empty("s1")).applied(click), [event])
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from plugin.session_store import (
    MAX_EVENTS_PER_SESSION,
    SessionState,
    SessionStoreError,
    StateUpdate,
)

#: Conflicting transactions one update survives before it gives up.
MAX_UPDATE_ATTEMPTS = 100
#: The longest pause between two attempts (seconds); the pause is random so racing writers
#: stop colliding.
MAX_RETRY_PAUSE = 0.05

_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """The URL without its password, for messages.

    >>> redact_url("redis://app:secret@cache:6379/0")
    'redis://app@cache:6379/0'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisSessionStore:
    """Sessions in Redis: each forgotten ``ttl_seconds`` after its last write, with its
    ``max_events`` most recent raw events. Thread-safe; any number of processes may share it.

    Connects on first use; every Redis failure raises `SessionStoreError` naming the server.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        ttl_seconds: float = 86_400.0,
        max_events: int = MAX_EVENTS_PER_SESSION,
        prefix: str = "shoprank:session:",
        timeout_seconds: float = 1.0,
    ) -> None:
        if urlsplit(url).scheme not in _SCHEMES:
            raise ValueError(
                f"RedisSessionStore needs a redis://, rediss:// or unix:// URL, not {url!r}"
            )
        if ttl_seconds < 0.001 or max_events < 1 or timeout_seconds <= 0:
            raise ValueError(
                "RedisSessionStore needs ttl_seconds >= 0.001, max_events >= 1, "
                "timeout_seconds > 0"
            )
        self._url = url
        self.ttl_seconds = ttl_seconds
        self.max_events = max_events
        self.prefix = prefix
        self.timeout_seconds = timeout_seconds
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return redact_url(self._url)

    def _redis(self) -> redis.Redis:
        with self._lock:
            if self._client is None:
                try:
                    self._client = redis.Redis.from_url(
                        self._url,
                        socket_timeout=self.timeout_seconds,
                        socket_connect_timeout=self.timeout_seconds,
                        # Fail fast: redis-py's default retries with backoff for seconds. A
                        # caller that can degrade (search without personalisation) should.
                        retry=Retry(NoBackoff(), 0),
                    )
                except ValueError as e:
                    raise SessionStoreError(f"invalid Redis URL {self.location}: {e}") from e
            return self._client

    def _state_key(self, session_id: str) -> str:
        return f"{self.prefix}{{{session_id}}}:state"

    def _events_key(self, session_id: str) -> str:
        return f"{self.prefix}{{{session_id}}}:events"

    def _failed(self, action: str, session_id: str | None, e: Exception) -> SessionStoreError:
        subject = f" session {session_id!r}" if session_id is not None else ""
        return SessionStoreError(
            f"Redis at {self.location}: cannot {action}{subject}: {type(e).__name__}: {e}"
        )

    def _decode_state(self, raw: bytes, session_id: str) -> SessionState:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise SessionStoreError(
                f"unreadable state of session {session_id!r} in Redis at {self.location}: {e}"
            ) from e
        if not isinstance(data, dict):
            raise SessionStoreError(
                f"unreadable state of session {session_id!r} in Redis at {self.location}: "
                "not a JSON object"
            )
        return SessionState.from_json(data)

    def get(self, session_id: str) -> SessionState | None:
        try:
            raw = cast(bytes | None, self._redis().get(self._state_key(session_id)))
        except redis.RedisError as e:
            raise self._failed("read", session_id, e) from e
        return None if raw is None else self._decode_state(raw, session_id)

    def update(
        self, session_id: str, update: StateUpdate, events: Sequence[Mapping[str, Any]]
    ) -> SessionState:
        """Atomically replace the state with ``update(state)`` and append ``events``.

        ``update`` may run more than once (once per conflicting write by another client), so
        it must not have side effects. If the connection drops during the final write, the
        update may or may not have been applied; that raises `SessionStoreError`.
        """
        payloads = []
        for number, event in enumerate(events):
            try:
                payloads.append(json.dumps(dict(event), separators=(",", ":")))
            except (TypeError, ValueError) as e:
                raise TypeError(
                    f"event {number} of session {session_id!r} is not JSON-serialisable: {e}"
                ) from e
        client = self._redis()
        for attempt in range(MAX_UPDATE_ATTEMPTS):
            try:
                with client.pipeline(transaction=True) as pipe:
                    return self._try_update(pipe, session_id, update, payloads)
            except redis.WatchError as e:
                # redis-py reports a connection lost while watching as a WatchError too
                if isinstance(e.__context__, redis.ConnectionError | redis.TimeoutError):
                    raise self._failed("update", session_id, e.__context__) from e
                time.sleep(random.uniform(0, min(MAX_RETRY_PAUSE, 0.001 * 2**attempt)))
            except redis.RedisError as e:
                raise self._failed("update", session_id, e) from e
        raise SessionStoreError(
            f"Redis at {self.location}: session {session_id!r} changed under "
            f"{MAX_UPDATE_ATTEMPTS} update attempts in a row; gave up"
        )

    def _try_update(
        self, pipe: Pipeline, session_id: str, update: StateUpdate, payloads: list[str]
    ) -> SessionState:
        """One attempt; raises `redis.WatchError` when another client wrote the state first."""
        key, events_key = self._state_key(session_id), self._events_key(session_id)
        ttl_ms = max(1, round(self.ttl_seconds * 1000))
        pipe.watch(key)  # type: ignore[no-untyped-call]  # unannotated in redis-py 7.4
        raw = cast(bytes | None, pipe.get(key))
        state = update(None if raw is None else self._decode_state(raw, session_id))
        pipe.multi()
        pipe.set(key, json.dumps(state.to_json(), separators=(",", ":")), px=ttl_ms)
        if payloads:
            pipe.rpush(events_key, *payloads)
            pipe.ltrim(events_key, -self.max_events, -1)
        pipe.pexpire(events_key, ttl_ms)
        pipe.execute()
        return state

    def events(self, session_id: str, limit: int = MAX_EVENTS_PER_SESSION) -> list[dict[str, Any]]:
        if limit < 1:
            return []
        try:
            raw = cast(
                list[bytes], self._redis().lrange(self._events_key(session_id), -limit, -1)
            )
        except redis.RedisError as e:
            raise self._failed("read the events of", session_id, e) from e
        try:
            return [cast(dict[str, Any], json.loads(item)) for item in raw]
        except (ValueError, UnicodeDecodeError) as e:
            raise SessionStoreError(
                f"unreadable event of session {session_id!r} in Redis at {self.location}: {e}"
            ) from e

    def delete(self, session_id: str) -> bool:
        try:
            with self._redis().pipeline(transaction=True) as pipe:
                pipe.exists(self._state_key(session_id))
                pipe.delete(self._state_key(session_id), self._events_key(session_id))
                existed, _ = pipe.execute()
        except redis.RedisError as e:
            raise self._failed("delete", session_id, e) from e
        return bool(existed)

    def ping(self) -> None:
        try:
            self._redis().ping()
        except redis.RedisError as e:
            raise self._failed("ping", None, e) from e

    def close(self) -> None:
        """Close the connections; the next call reconnects."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except redis.RedisError as e:
                raise self._failed("close", None, e) from e
