"""The thin I/O layer under `indexer.opensearch_store.OpenSearchStore`.

Connecting from the settings, turning opensearch-py's exceptions into `indexer.errors` types
that name the URL and the alias (`translated_errors`), and sending bulk actions with
`opensearchpy.helpers.streaming_bulk`, which retries 429s with backoff (`send_bulk`). The
request bodies themselves are built by the pure functions of `indexer.opensearch_queries`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import opensearchpy
from opensearchpy import OpenSearch, helpers

from indexer.errors import IndexNotFoundError, StoreError, StoreUnavailableError
from indexer.settings import IndexerSettings

logger = logging.getLogger(__name__)

_MAX_REPORTED_ERRORS = 10
#: Connections kept open to each node (see `connect`).
POOL_MAXSIZE = 64


def connect(settings: IndexerSettings) -> OpenSearch:
    """A client for ``settings.opensearch_url`` (no request is sent yet).

    With several URLs (one cluster's nodes) requests go round-robin; a node that refuses the
    connection or times out is set aside for a while and the request is retried on the next
    one, up to once per node. Sniffing stays off: the nodes' published addresses may not be
    reachable from here (containers, load balancers), the given URLs are.
    """
    s = settings
    hosts = s.opensearch_hosts
    auth = None
    if s.opensearch_username is not None:
        password = s.opensearch_password.get_secret_value() if s.opensearch_password else ""
        auth = (s.opensearch_username, password)
    several = len(hosts) > 1
    return OpenSearch(
        hosts=hosts,
        http_auth=auth,
        verify_certs=s.opensearch_verify_certs,
        ca_certs=_path(s.opensearch_ca_certs),
        client_cert=_path(s.opensearch_client_cert),
        client_key=_path(s.opensearch_client_key),
        timeout=s.opensearch_timeout_s,
        # one node: one retry, never after a timeout (as before); several: the next node each
        max_retries=len(hosts) - 1 if several else 1,
        retry_on_timeout=several,
        sniff_on_start=False,
        sniff_on_connection_fail=False,
        # Keep-alive connections per node: as many as the server runs concurrent searches
        # (each does BM25 and k-NN at once), not urllib3's default of one, which made every
        # concurrent request open and discard its own connection.
        pool_maxsize=POOL_MAXSIZE,
    )


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


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


def missing_shards(response: Mapping[str, Any]) -> str | None:
    """Why a search answer lacks some shards' hits, or None when every shard answered.

    OpenSearch answers 200 with the other shards' hits when a shard copy fails after the query
    phase (its node died before the fetch phase), so the caller must look.
    """
    shards = response.get("_shards", {})
    if not shards.get("failed"):
        return None
    failures = shards.get("failures", [])
    reasons = sorted({str(f.get("reason", {}).get("reason", f)) for f in failures})
    return (f"{shards.get('successful')} of {shards.get('total')} shards answered: "
            + "; ".join(reasons[:3]))


def missing_documents(response: Mapping[str, Any]) -> str | None:
    """Why an ``mget`` answer lacks some documents' state (a shard failed), or None."""
    errors = [doc for doc in response.get("docs", []) if "error" in doc]
    if not errors:
        return None
    reason = errors[0]["error"]
    return f"{len(errors)} document(s) unread: " + str(
        reason.get("reason", reason) if isinstance(reason, Mapping) else reason)


def search_every_shard(
    client: OpenSearch, index: str, body: dict[str, Any], url: str
) -> dict[str, Any]:
    """`OpenSearch.search` whose answer holds every shard's hits.

    A partial answer (or a 5xx saying every shard failed) is sent again once: the new
    request's query phase routes around a dead copy to a live one. Still partial, it raises
    `StoreUnavailableError` rather than returning fewer products as if that were all.
    """
    return _complete(lambda: client.search(index=index, body=body), missing_shards, url, index)


def mget_every_shard(
    client: OpenSearch, index: str, body: dict[str, Any], url: str, **params: Any
) -> dict[str, Any]:
    """`OpenSearch.mget` where every document is either found or known missing, as above."""
    return _complete(lambda: client.mget(index=index, body=body, **params), missing_documents,
                     url, index)


def _complete(
    request: Callable[[], dict[str, Any]],
    missing: Callable[[Mapping[str, Any]], str | None],
    url: str,
    index: str,
) -> dict[str, Any]:
    problem = ""
    for attempt in range(2):
        try:
            response = request()
        except opensearchpy.TransportError as e:
            if attempt or not _lost_shards(e):
                raise
            problem = f"{e.status_code} {e.error}"
        else:
            found = missing(response)
            if found is None:
                return response
            problem = found
        if not attempt:
            logger.warning("partial answer from %s for %s, asking again: %s", url, index, problem)
    raise StoreUnavailableError(f"OpenSearch at {url} answered only in part for {index}: {problem}")


def _lost_shards(error: opensearchpy.TransportError) -> bool:
    """Every shard of a search failed on the server's side (e.g. all in a node that just died),
    not because of the request: worth one more try on live copies."""
    status = error.status_code
    return isinstance(status, int) and status >= 500 and (
        error.error == "search_phase_execution_exception"
    )


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
