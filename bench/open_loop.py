"""An open-loop load benchmark of `POST /search`: requests arrive at a fixed rate, and each one's
latency runs from when it was due.

    python3 -m bench.open_loop --rates 1,2,4,8 --duration 60 [--out bench/open-loop-DATE.md] \
        [--home DIR] [--reranker onnx] [--p99-limit-ms 1000] [--timeout 30]

A closed-loop generator (`bench.http_load`) sends its next request only when an answer came
back, so a slow server slows the load down and the time requests would have waited never shows
(coordinated omission). Here request i is due at start + i / rate and is sent then, whether or
not the earlier ones were answered: each is its own asyncio task on one client with no
connection limit. Its latency runs from when it was due to its last byte, so the time it waited,
in the server's queue or behind a late generator, counts. How late the generator itself sent
(send lag) is reported too.

It starts a real ``shoprank serve`` on a free loopback port over the bundled demo catalog's
index (``shoprank demo --no-serve`` builds it under ``--home`` when missing): hybrid retrieval
and the final stage, reranked by the reranker the demo ships (``--reranker`` to change it). It
warms the server up, then runs each rate for ``--duration`` seconds in turn, and reports per
rate: p50/p95/p99/max latency of the answered requests, errors (non-2xx answers and transport
errors, a timeout included), the achieved rate (2xx answers per second of the rate's duration,
or of the time to the last answer when that is longer) and the server's resident memory (VmRSS)
before and after. It names the
first rate where p99 passes ``--p99-limit-ms`` (1 s) or more than 1% of requests failed.

The queries are the first two to five words of product titles spread over the demo catalog
(every n-th product), not a judged query set. The generator runs on the server's machine: on a
small machine it takes CPU from the server, as a real client there would.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from bench.http_load import (
    DEFAULT_TIMEOUT_S,
    RequestResult,
    Server,
    free_port,
    running_server,
    send,
    summarize,
)
from bench.machine import cpu_model, percentile
from plugin.demo import DEMO_CATALOG, DEMO_INDEX

REPO = Path(__file__).resolve().parents[1]
#: A request not answered in this many seconds is an error (a timeout).
REQUEST_TIMEOUT_S = 30.0
#: The latency the benchmark looks for the crossing of.
P99_LIMIT_MS = 1000.0
#: A rate with more failed requests than this share counts as past the limit.
ERROR_SHARE_LIMIT = 0.01
#: How many different queries are cycled.
QUERY_COUNT = 500
#: Searches sent one at a time before measuring (the first loads the reranker).
WARMUP_SEARCHES = 5


@dataclass(frozen=True)
class OpenLoopRun:
    """What one rate's requests did, in the order they were due."""

    results: list[RequestResult]
    #: Seconds from the first due time to the last answer.
    seconds: float
    #: The most requests in flight at once.
    max_in_flight: int
    #: Seconds each request was sent after it was due (the generator's own lateness).
    send_lags: list[float]


@dataclass(frozen=True)
class RatePoint:
    """One rate's figures. Latencies are over the 2xx answers, from each request's due time."""

    rate: float
    duration_s: float
    scheduled: int
    ok: int
    errors: int
    degraded: int
    status_counts: dict[str, int]
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    max_in_flight: int
    send_lag_p99_ms: float
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    first_error: str | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)

    def past(self, p99_limit_ms: float) -> bool:
        """Whether this rate is past the limit: p99 over it, or too many failures."""
        failed = self.errors / self.scheduled if self.scheduled else 0.0
        return self.p99_ms > p99_limit_ms or failed > ERROR_SHARE_LIMIT or self.ok == 0


def due_offsets(rate: float, duration: float) -> list[float]:
    """When each request is due, in seconds from the start: every 1 / ``rate`` seconds.

    >>> due_offsets(4, 1)
    [0.0, 0.25, 0.5, 0.75]
    """
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate {rate} and duration {duration} must be positive")
    return [i / rate for i in range(round(rate * duration))]


async def run_open_loop(
    client: httpx.AsyncClient,
    bodies: Sequence[dict[str, Any]],
    *,
    rate: float,
    duration: float,
    path: str = "/search",
    offset: int = 0,
) -> OpenLoopRun:
    """Send one request (bodies cycled from ``offset``) every 1 / ``rate`` seconds for
    ``duration`` seconds without waiting for answers, then wait for them all."""
    if not bodies:
        raise ValueError("no request bodies")
    in_flight = most = 0
    lags: list[float] = []

    async def one(body: dict[str, Any], due: float) -> RequestResult:
        nonlocal in_flight, most
        lags.append(time.perf_counter() - due)
        in_flight += 1
        most = max(most, in_flight)
        try:
            result = await send(client, path, body)
        finally:
            in_flight -= 1
        return replace(result, seconds=time.perf_counter() - due)

    tasks = []
    start = time.perf_counter()
    for i, at in enumerate(due_offsets(rate, duration)):
        due = start + at
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(bodies[(offset + i) % len(bodies)], due)))
    results = await asyncio.gather(*tasks)
    return OpenLoopRun(list(results), time.perf_counter() - start, most, lags)


def rate_point(
    run: OpenLoopRun, *, rate: float, duration: float,
    rss_before_mb: float | None = None, rss_after_mb: float | None = None,
) -> RatePoint:
    """One rate's figures from its run (percentiles: `bench.machine.percentile`)."""
    # Per second of the schedule, or of the time the answers took when they came later.
    summary = summarize(run.results, concurrency=run.max_in_flight,
                        seconds=max(duration, run.seconds), max_in_flight=run.max_in_flight)
    answered = [r.seconds * 1000 for r in run.results if r.ok]
    return RatePoint(
        rate=rate,
        duration_s=duration,
        scheduled=len(run.results),
        ok=summary.ok,
        errors=summary.errors,
        degraded=summary.degraded,
        status_counts=summary.status_counts,
        achieved_rps=summary.requests_per_s,
        p50_ms=summary.p50_ms,
        p95_ms=summary.p95_ms,
        p99_ms=summary.p99_ms,
        max_ms=max(answered) if answered else float("nan"),
        max_in_flight=run.max_in_flight,
        send_lag_p99_ms=percentile([lag * 1000 for lag in run.send_lags], 99)
        if run.send_lags else float("nan"),
        rss_before_mb=rss_before_mb,
        rss_after_mb=rss_after_mb,
        first_error=summary.first_error,
    )


def open_client(url: str, timeout: float = REQUEST_TIMEOUT_S) -> httpx.AsyncClient:
    """A client with no limit on connections: an open loop never waits for a free one."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)


async def measure_rate(
    server: Server, bodies: Sequence[dict[str, Any]], *, rate: float, duration: float,
    offset: int = 0, timeout: float = REQUEST_TIMEOUT_S,
) -> RatePoint:
    """One rate against a running server, with its memory before and after."""
    before = server.rss_mb()
    async with open_client(server.url, timeout) as client:
        run = await run_open_loop(client, bodies, rate=rate, duration=duration, offset=offset)
    return rate_point(run, rate=rate, duration=duration, rss_before_mb=before,
                      rss_after_mb=server.rss_mb())


def first_past(points: Sequence[RatePoint], p99_limit_ms: float) -> str:
    """Where the latency passes the limit, in words."""
    limit = f"{p99_limit_ms:g} ms"
    for before, point in zip([None, *points], points, strict=False):
        if point.past(p99_limit_ms):
            why = (f"p99 {point.p99_ms:.0f} ms, {point.errors} of {point.scheduled} failed")
            if before is None:
                return f"p99 is past {limit} already at the lowest rate, {point.rate:g}/s ({why})"
            return (f"p99 passes {limit} between {before.rate:g}/s (p99 {before.p99_ms:.0f} ms) "
                    f"and {point.rate:g}/s ({why})")
    return f"p99 stays under {limit} up to {points[-1].rate:g}/s, the highest rate run"


def demo_queries(count: int = QUERY_COUNT) -> list[str]:
    """The first two to five words of ``count`` product titles spread evenly over the demo
    catalog, in catalog order, without repeats."""
    with gzip.open(DEMO_CATALOG, "rt", encoding="utf-8") as handle:
        titles = [str(json.loads(line).get("title") or "") for line in handle]
    step = max(1, len(titles) // count)
    queries: dict[str, None] = {}
    for i, title in enumerate(titles[::step]):
        words = title.split()[: 2 + i % 4]
        if words:
            queries.setdefault(" ".join(words).lower())
    return list(queries)[:count]


def search_body(query: str) -> dict[str, Any]:
    """Hybrid retrieval with the final stage (a 400 if the server has none); reranking as the
    server's default."""
    return {"query": query, "k": 10, "mode": "hybrid", "final": True}


def markdown(points: Sequence[RatePoint], about: dict[str, Any], p99_limit_ms: float) -> str:
    """The result file: how it was run, then one row per rate."""
    def f(value: float | None, digits: int = 0) -> str:
        return "n/a" if value is None or value != value else f"{value:,.{digits}f}"

    lines = [
        f"# Open-loop load on `POST /search` ({about['date']})",
        "",
        f"- command: `{about['command']}`",
        f"- server: `{about['server']}` (`{about['search']}`)",
        f"- machine: {about['machine']}; the generator ran on it too",
        f"- queries: {about['queries']}",
        f"- latency from each request's due time to its last byte, over the 2xx answers; "
        f"requests due every 1/rate s for {about['duration']:g} s per rate, sent whether or not "
        "earlier ones were answered",
        "",
        "| rate /s | sent | 2xx | errors | achieved /s | p50 ms | p95 ms | p99 ms | max ms "
        "| most in flight | send lag p99 ms | server RSS MB before → after |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in points:
        lines.append(
            f"| {p.rate:g} | {p.scheduled} | {p.ok} | {p.errors} | {f(p.achieved_rps, 2)} "
            f"| {f(p.p50_ms)} | {f(p.p95_ms)} | {f(p.p99_ms)} | {f(p.max_ms)} "
            f"| {p.max_in_flight} | {f(p.send_lag_p99_ms, 1)} "
            f"| {f(p.rss_before_mb)} → {f(p.rss_after_mb)} |"
        )
    lines += ["", f"**{first_past(points, p99_limit_ms)}.**", ""]
    errors = [f"- {p.rate:g}/s: {p.status_counts}, first: {p.first_error}"
              for p in points if p.errors]
    if errors:
        lines += ["Errors:", "", *errors, ""]
    return "\n".join(lines)


def ensure_demo_index(env: dict[str, str]) -> None:
    """Index the bundled demo catalog under the environment's ``SHOPRANK_HOME`` if missing."""
    result = subprocess.run([sys.executable, "-m", "plugin", "demo", "--no-serve"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"shoprank demo --no-serve failed:\n{result.stdout}\n{result.stderr}")


async def warm_up(url: str, bodies: Sequence[dict[str, Any]]) -> None:
    """One search at a time, unmeasured: the first loads (or exports) the reranker."""
    async with httpx.AsyncClient(base_url=url, timeout=DEFAULT_TIMEOUT_S) as client:
        for body in bodies[:WARMUP_SEARCHES]:
            result = await send(client, "/search", body)
            if not result.ok:
                raise SystemExit(f"warm-up search failed: {result.error}")


def parse_rates(text: str) -> list[float]:
    """``"1,2,4"`` as rates, each above 0, in the order given.

    >>> parse_rates("1, 2.5,4")
    [1.0, 2.5, 4.0]
    """
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--rates: comma-separated numbers, got {text!r}") from e
    if not rates or any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"--rates: each rate must be above 0, got {text!r}")
    return rates


def main(argv: Sequence[str] | None = None) -> list[RatePoint]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=parse_rates, default=[1.0, 2.0, 4.0, 8.0],
                        help="requests per second, comma-separated, run in this order")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per rate")
    parser.add_argument("--home", type=Path,
                        help="SHOPRANK_HOME holding the demo index (default: the environment's)")
    parser.add_argument("--reranker", choices=["onnx", "cross-encoder", "triton", "none"],
                        default="onnx", help="the server's reranker (default: the demo's)")
    parser.add_argument("--p99-limit-ms", type=float, default=P99_LIMIT_MS)
    parser.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT_S,
                        help="seconds after which an unanswered request is an error")
    parser.add_argument("--out", type=Path, help="write the Markdown result here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.timeout <= 0:
        parser.error("--duration and --timeout must be above 0")

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.home is not None:
        env["SHOPRANK_HOME"] = str(args.home.resolve())
    print(f"the demo index under {env.get('SHOPRANK_HOME', 'the default home')}: built if "
          "missing (minutes, once)", file=sys.stderr, flush=True)
    ensure_demo_index(env)
    load_at_start = os.getloadavg()[0]
    queries = demo_queries()
    bodies = [search_body(query) for query in queries]
    port = free_port()
    server_argv = [sys.executable, "-m", "plugin", "serve", "--index", DEMO_INDEX,
                   "--reranker", args.reranker, "--final-ranker", "default",
                   "--port", str(port)]
    log = Path(tempfile.gettempdir()) / f"shoprank-open-loop-{port}.log"
    points: list[RatePoint] = []
    with running_server("shoprank", server_argv, port=port, env=env, log=log, cwd=REPO) as server:
        asyncio.run(warm_up(server.url, bodies))
        offset = WARMUP_SEARCHES
        for rate in args.rates:
            print(f"rate {rate:g}/s for {args.duration:g} s ...", file=sys.stderr, flush=True)
            point = asyncio.run(measure_rate(server, bodies, rate=rate, duration=args.duration,
                                             offset=offset, timeout=args.timeout))
            offset += point.scheduled
            points.append(point)
            print(json.dumps(point.row()), flush=True)
    about = {
        "date": date.today().isoformat(),
        "command": shlex.join(["python3", "-m", "bench.open_loop", *(argv or sys.argv[1:])]),
        "server": shlex.join(["shoprank", *server_argv[3:-2]]),
        "search": json.dumps(search_body("...")),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}, load average "
                   f"{load_at_start:.1f} before the server started",
        "queries": f"{len(queries)} title prefixes from the bundled demo catalog, cycled",
        "duration": args.duration,
    }
    report = markdown(points, about, args.p99_limit_ms)
    print(report)
    if args.out is not None:
        args.out.write_text(report, encoding="utf-8")
    return points


if __name__ == "__main__":
    main()
