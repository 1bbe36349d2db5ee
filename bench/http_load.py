"""A bounded loopback load generator for `POST /search`: latency per request and status codes.

    python3 -m bench.http_load --url http://127.0.0.1:8080 --concurrency 1 4 16 --requests 40 \
        [--mode hybrid] [--rerank] [--queries FILE] [--seconds 60]

Exactly C requests are in flight at a time (C asyncio workers sharing one `httpx.AsyncClient`
with at most C connections). A point ends after a fixed number of requests, or when its time
limit passes, whichever comes first: no request starts after the limit, and the ones in flight
are waited for (a cancelled request would keep the server busy into the next point). Every
request's latency (client side, connection included), status code and, from the response body,
the server's own ``timings_ms`` are kept; a response other than 2xx, or a transport error
(refused, reset, timed out), counts as an error and is reported, never dropped.

The generator runs on the same machine as the server: on a small machine it takes CPU from it.
`running_server` starts a server subprocess on a free loopback port and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from bench.machine import percentile

#: A request slower than this is a transport error: generous, a rerank queue on 2 cores is long.
DEFAULT_TIMEOUT_S = 900.0
#: How long a started server may take to answer ``GET /readyz`` (it loads models first).
READY_TIMEOUT_S = 600.0
#: The server's encode stage under this many ms means its query-embedding cache answered.
CACHE_HIT_ENCODE_MS = 1.0


@dataclass(frozen=True)
class RequestResult:
    """One request: its latency, its status (None: no response) and the server's timings."""

    seconds: float
    status: int | None
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: The response said ``degraded`` (answered, but without a stage that failed).
    degraded: bool = False

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class LoadSummary:
    """One load point. Latency percentiles are over the successful requests only."""

    concurrency: int
    requests: int
    ok: int
    errors: int
    degraded: int
    status_counts: dict[str, int]
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_in_flight: int
    #: The median of the server's own ``timings_ms["total"]`` (no queueing, no HTTP).
    server_p50_ms: float | None = None
    #: Share of successful requests whose server-side encode stage took under 1 ms.
    encode_cache_hits: float | None = None
    first_error: str | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    results: Sequence[RequestResult], *, concurrency: int, seconds: float, max_in_flight: int
) -> LoadSummary:
    """The figures of one point; ``seconds`` is its wall time."""
    good = [r for r in results if r.ok]
    ms = [r.seconds * 1000 for r in good]
    nan = float("nan")
    statuses = Counter("error" if r.status is None else str(r.status) for r in results)
    totals = [r.timings_ms["total"] for r in good if "total" in r.timings_ms]
    encodes = [r.timings_ms["encode"] for r in good if "encode" in r.timings_ms]
    failed = [r for r in results if not r.ok]
    return LoadSummary(
        concurrency=concurrency,
        requests=len(results),
        ok=len(good),
        errors=len(failed),
        degraded=sum(1 for r in good if r.degraded),
        status_counts=dict(sorted(statuses.items())),
        seconds=seconds,
        requests_per_s=len(good) / seconds if seconds > 0 else nan,
        p50_ms=percentile(ms, 50) if ms else nan,
        p95_ms=percentile(ms, 95) if ms else nan,
        p99_ms=percentile(ms, 99) if ms else nan,
        mean_ms=statistics.fmean(ms) if ms else nan,
        max_in_flight=max_in_flight,
        server_p50_ms=percentile(totals, 50) if totals else None,
        encode_cache_hits=(
            sum(1 for value in encodes if value < CACHE_HIT_ENCODE_MS) / len(encodes)
            if encodes else None
        ),
        first_error=_describe(failed[0]) if failed else None,
    )


def _describe(result: RequestResult) -> str:
    if result.error is not None:
        return result.error
    return f"HTTP {result.status}"


async def send(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> RequestResult:
    """POST ``body`` to ``path``: its latency from now to the whole response, its status, and
    the server's timings; a non-2xx answer or a transport error is a result with its error."""
    start = time.perf_counter()
    try:
        response = await client.post(path, json=body)
        content = response.content
    except httpx.HTTPError as e:  # refused, reset, timed out: an error, with its kind
        return RequestResult(time.perf_counter() - start, None, f"{type(e).__name__}: {e}")
    seconds = time.perf_counter() - start
    if not 200 <= response.status_code < 300:
        detail = " ".join(content[:200].decode(errors="replace").split())
        error = f"HTTP {response.status_code}: {detail}"
        return RequestResult(seconds, response.status_code, error)
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return RequestResult(seconds, response.status_code)
    timings = data.get("timings_ms") or {}
    return RequestResult(seconds, response.status_code, None, timings, bool(data.get("degraded")))


async def run_load(
    client: httpx.AsyncClient,
    bodies: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    requests: int,
    seconds: float | None = None,
    path: str = "/search",
    offset: int = 0,
) -> tuple[list[RequestResult], float, int]:
    """Send ``requests`` bodies (cycled from ``offset``) with ``concurrency`` in flight.

    Returns the results in completion order, the wall time and the most requests seen in
    flight at once. ``seconds``: no request starts after this long.
    """
    if concurrency < 1 or requests < 0 or not bodies:
        raise ValueError(f"concurrency {concurrency}, requests {requests}, {len(bodies)} bodies")
    results: list[RequestResult] = []
    issued = 0
    in_flight = 0
    most = 0
    start = time.perf_counter()
    deadline = start + seconds if seconds is not None else float("inf")

    async def worker() -> None:
        nonlocal issued, in_flight, most
        while issued < requests and time.perf_counter() < deadline:
            body = bodies[(offset + issued) % len(bodies)]
            issued += 1
            in_flight += 1
            most = max(most, in_flight)
            try:
                results.append(await send(client, path, body))
            finally:
                in_flight -= 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - start, most


def client_for(url: str, concurrency: int, timeout: float = DEFAULT_TIMEOUT_S) -> httpx.AsyncClient:
    """One client per point: at most ``concurrency`` connections, no connection reuse across
    points (keep-alive within a point, as a browser or a service client would)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)


async def measure_point(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    requests: int,
    seconds: float | None = None,
    offset: int = 0,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> LoadSummary:
    """One load point against a running server."""
    async with client_for(url, concurrency, timeout) as client:
        results, wall, most = await run_load(
            client, bodies, concurrency=concurrency, requests=requests, seconds=seconds,
            offset=offset,
        )
    return summarize(results, concurrency=concurrency, seconds=wall, max_in_flight=most)


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A server subprocess that `running_server` started."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    argv: list[str]

    def peak_rss_mb(self) -> float | None:
        return process_status_mb(self.process.pid, "VmHWM")

    def rss_mb(self) -> float | None:
        """The server's resident memory now."""
        return process_status_mb(self.process.pid, "VmRSS")


def process_status_mb(pid: int, field: str) -> float | None:
    """A memory field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``) in MB; None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def running_server(
    name: str, argv: list[str], *, port: int, env: dict[str, str], log: Path, cwd: Path,
    ready_timeout: float = READY_TIMEOUT_S,
) -> Iterator[Server]:
    """A server subprocess listening on loopback ``port``, ready (``GET /readyz`` answers 200)
    when yielded; terminated (killed after 30 s) on exit. Its output goes to ``log``."""
    handle: IO[bytes] = log.open("wb")
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    server = Server(name, f"http://127.0.0.1:{port}", process, log, argv)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{name} server exited ({process.returncode}):\n{_tail(log)}")
            try:
                if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} server not ready after {ready_timeout:g} s:\n"
                                 f"{_tail(log)}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        handle.close()


def server_metrics(server: Server) -> dict[str, float]:
    """The counters and gauges of ``GET /metrics`` (Prometheus text), by sample name with its
    labels (``shoprank_search_degraded_total{reason="timeout"}``); histograms left out."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
    except httpx.HTTPError:
        return {}
    values = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "gauge") or family.name.endswith("_created"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def search_bodies(
    queries: Sequence[str], *, mode: str, rerank: bool, k: int = 10
) -> list[dict[str, Any]]:
    """``POST /search`` bodies for ``queries``, reranked or explicitly not."""
    return [{"query": q, "k": k, "mode": mode, "rerank": rerank} for q in queries]


def main() -> None:
    from reranker.metrics import load_queries

    default_queries = Path(__file__).resolve().parents[2] / "shared/data/esci-us/queries.tsv"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=40, help="per point")
    parser.add_argument("--seconds", type=float, help="no request starts after this (per point)")
    parser.add_argument("--mode", choices=["bm25", "vector", "hybrid"], default="hybrid")
    parser.add_argument("--rerank", action="store_true")
    parser.add_argument("--queries", type=Path, default=default_queries)
    args = parser.parse_args()

    bodies = search_bodies(
        list(load_queries(args.queries).values()), mode=args.mode, rerank=args.rerank
    )
    failed = 0
    for level in args.concurrency:
        point = asyncio.run(measure_point(
            args.url, bodies, concurrency=level, requests=max(args.requests, level),
            seconds=args.seconds,
        ))
        failed += point.errors
        print(json.dumps(point.row()), flush=True)
    if failed:
        sys.exit(f"{failed} request(s) failed")


if __name__ == "__main__":
    main()
