"""The open-loop load benchmark (`bench/open_loop.py`): against a mock transport, that requests
go out on schedule whether or not earlier ones were answered and that latency counts from the
due time; then a two-second run against a real ``shoprank serve`` and its report."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from bench.open_loop import (
    OpenLoopRun,
    RatePoint,
    demo_queries,
    due_offsets,
    first_past,
    main,
    markdown,
    rate_point,
    run_open_loop,
)
from tests.conftest import REPO, demo_slice


def _run(
    handle: Callable[[httpx.Request], Awaitable[httpx.Response]], *, rate: float, duration: float
) -> OpenLoopRun:
    async def go() -> OpenLoopRun:
        transport = httpx.MockTransport(handle)
        async with httpx.AsyncClient(base_url="http://test", transport=transport) as client:
            bodies = [{"query": q} for q in ("a", "b", "c")]
            return await run_open_loop(client, bodies, rate=rate, duration=duration)

    return asyncio.run(go())


def test_requests_go_out_on_schedule_and_wait_in_the_servers_queue_counts() -> None:
    """A server that answers one request at a time, each taking 50 ms, gets one every 20 ms:
    they pile up instead of the generator slowing down, and the waiting shows in the latency."""
    lock = asyncio.Lock()
    seen: list[str] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content)["query"])
        async with lock:
            await asyncio.sleep(0.05)
        return httpx.Response(200, json={"timings_ms": {"total": 50.0}})

    run = _run(handle, rate=50, duration=0.2)
    assert len(run.results) == 10 and seen == ["a", "b", "c"] * 3 + ["a"]
    assert run.max_in_flight >= 2  # sent without waiting for the earlier answers
    # The last was due at 0.18 s and could not finish before all ten had been served (0.5 s).
    assert run.results[-1].seconds >= 0.5 - 0.18
    point = rate_point(run, rate=50, duration=0.2, rss_before_mb=100.0, rss_after_mb=110.0)
    assert (point.scheduled, point.ok, point.errors) == (10, 10, 0)
    assert point.max_ms >= point.p99_ms >= point.p50_ms >= 50


def test_errors_and_refusals_are_counted_and_left_out_of_the_latency() -> None:
    calls = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 2:
            return httpx.Response(503, json={"detail": "search backend failed"})
        if calls == 3:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"degraded": calls == 4, "timings_ms": {"total": 1.0}})

    point = rate_point(_run(handle, rate=100, duration=0.05), rate=100, duration=0.05)
    assert point.status_counts == {"200": 3, "503": 1, "error": 1}
    assert (point.scheduled, point.ok, point.errors, point.degraded) == (5, 3, 2, 1)
    assert point.first_error is not None and "503" in point.first_error
    assert point.past(1000.0)  # 2 of 5 failed: past the limit whatever the latency


def _point(rate: float, p99: float, errors: int = 0) -> RatePoint:
    return RatePoint(rate=rate, duration_s=60, scheduled=100, ok=100 - errors, errors=errors,
                     degraded=0, status_counts={}, achieved_rps=rate, p50_ms=p99 / 2,
                     p95_ms=p99, p99_ms=p99, max_ms=p99, max_in_flight=3, send_lag_p99_ms=0.5)


def test_the_report_names_where_p99_passes_the_limit() -> None:
    assert due_offsets(2, 2) == [0.0, 0.5, 1.0, 1.5]
    points = [_point(1, 300), _point(2, 700), _point(4, 1500), _point(8, 9000)]
    assert first_past(points, 1000) == (
        "p99 passes 1000 ms between 2/s (p99 700 ms) and 4/s (p99 1500 ms, 0 of 100 failed)")
    assert first_past(points[:2], 1000) == (
        "p99 stays under 1000 ms up to 2/s, the highest rate run")
    assert first_past([_point(1, 200, errors=5)], 1000).startswith(
        "p99 is past 1000 ms already at the lowest rate, 1/s")
    queries = demo_queries(50)
    assert len(queries) == len(set(queries)) == 50
    assert all(2 <= len(q.split()) <= 5 for q in queries)


@pytest.mark.slow
def test_a_short_run_against_a_real_server_writes_every_field(tmp_path: Path) -> None:
    """Two seconds at 2 requests a second, on a 40-product index standing in for the demo's
    (the bench builds the demo index only when it is missing)."""
    catalog = tmp_path / "slice.jsonl"
    catalog.write_text("\n".join(json.dumps(r) for r in demo_slice(40)) + "\n", encoding="utf-8")
    home = tmp_path / "home"
    env = {**os.environ, "SHOPRANK_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "plugin", "reindex", "--catalog", str(catalog),
                    "--index", "demo"], env=env, cwd=REPO, check=True, capture_output=True,
                   timeout=600)
    out = tmp_path / "open-loop.md"
    points = main(["--rates", "2", "--duration", "2", "--home", str(home),
                   "--reranker", "none", "--out", str(out)])
    [point] = points
    assert (point.rate, point.scheduled, point.ok, point.errors) == (2, 4, 4, 0)
    assert point.p50_ms > 0 and point.p99_ms >= point.p50_ms and point.achieved_rps > 0
    assert point.rss_before_mb is not None and point.rss_before_mb > 0
    assert point.rss_after_mb is not None and point.rss_after_mb > 0
    report = out.read_text(encoding="utf-8")
    assert "| rate /s | sent | 2xx | errors |" in report
    assert "| 2 | 4 | 4 | 0 |" in report
    assert f"**{first_past(points, 1000)}.**" in report
    about = {"date": "d", "command": "c", "server": "s", "search": "b", "machine": "m",
             "queries": "q", "duration": 2.0}
    assert markdown(points, about, 1000).count("\n| 2 |") == 1
