"""The thin I/O layer under `indexer.opensearch_store.OpenSearchStore`.

Connecting from the settings, turning opensearch-py's exceptions into `indexer.errors` types
that name the URL and the alias (`translated_errors`), and sending bulk actions with
`opensearchpy.helpers.streaming_bulk`, which retries 429s with backoff (`send_bulk`). The
request bodies themselves are built by the pure functions of `indexer.opensearch_queries`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import opensearchpy
from opensearchpy import OpenSearch, helpers

from indexer.errors import IndexNotFoundError, StoreError, StoreUnavailableError
from indexer.settings import IndexerSettings

_MAX_REPORTED_ERRORS = 10


def connect(settings: IndexerSettings) -> OpenSearch:
    """A client for ``settings.opensearch_url`` (no request is sent yet)."""
    s = settings
    auth = None
    if s.opensearch_username is not None:
        password = s.opensearch_password.get_secret_value() if s.opensearch_password else ""
        auth = (s.opensearch_username, password)
    return OpenSearch(
        hosts=[s.opensearch_url],
        http_auth=auth,
        verify_certs=s.opensearch_verify_certs,
        ca_certs=str(s.opensearch_ca_certs) if s.opensearch_ca_certs else None,
        timeout=s.opensearch_timeout_s,
        max_retries=1,
        retry_on_timeout=False,
    )


@contextmanager
def translated_errors(url: str, alias: str, action: str) -> Iterator[None]:
    """Turn client exceptions into indexer errors that name the URL and the alias."""
    try:
        yield
    except opensearchpy.ConnectionError as e:
        raise StoreUnavailableError(
            f"OpenSearch at {url} is unreachable while trying to {action}: {e.info}"
        ) from e
    except opensearchpy.NotFoundError as e:
        raise IndexNotFoundError(
            f"OpenSearch at {url} has no index or alias {alias!r} "
            f"(run `shoprank reindex --store opensearch --catalog PATH`)"
        ) from e
    except opensearchpy.TransportError as e:
        raise StoreError(
            f"OpenSearch at {url} refused to {action} on {alias!r}: {e.status_code} {e.error}"
        ) from e


def send_bulk(
    client: OpenSearch,
    actions: Iterable[dict[str, Any]],
    index: str,
    *,
    refresh: bool = False,
    tolerated: Sequence[int] = (),
    on_written: Callable[[int], None] | None = None,
) -> int:
    """Send actions with retries on 429; raise listing the items that failed.

    ``on_written`` hears each item the server acknowledged (as ``on_written(1)``).

    Returns how many items failed with a ``tolerated`` status (404: a delete found nothing;
    409: a conditional update lost to a newer write).
    """
    errors: list[str] = []
    failed = skipped = 0
    for ok, item in helpers.streaming_bulk(
        client,
        actions,
        chunk_size=500,
        max_retries=5,
        initial_backoff=1,
        raise_on_error=False,
        yield_ok=on_written is not None,
        refresh=refresh,
    ):
        if ok:
            if on_written is not None:
                on_written(1)
            continue
        detail = next(iter(item.values()))
        if detail.get("status") in tolerated:
            skipped += 1
            continue
        failed += 1
        if len(errors) < _MAX_REPORTED_ERRORS:
            errors.append(f"{detail.get('_id')}: {detail.get('error')}")
    if failed:
        listed = "\n  ".join(errors)
        raise StoreError(f"{failed} product(s) failed in a bulk request to {index}:\n  {listed}")
    return skipped
