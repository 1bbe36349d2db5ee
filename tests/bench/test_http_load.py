"""The suite's HTTP load generator (`bench/http_load.py`) against a mock transport: no server."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from bench.http_load import RequestResult, run_load, search_bodies, summarize


def _served(
    transport: httpx.AsyncBaseTransport, *, concurrency: int, requests: int
) -> list[RequestResult]:
    async def go() -> tuple[list[RequestResult], float, int]:
        async with httpx.AsyncClient(base_url="http://test", transport=transport) as client:
            bodies = search_bodies(["a", "b", "c"], mode="hybrid", rerank=False)
            return await run_load(client, bodies, concurrency=concurrency, requests=requests)

    results, _, _ = asyncio.run(go())
    return results


def test_keeps_exactly_the_concurrency_in_flight_and_sends_the_fixed_count() -> None:
    in_flight, most, seen = 0, 0, []

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        seen.append(json.loads(request.content)["query"])
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json={"timings_ms": {"encode": 0.2, "total": 5.0}})

    async def go() -> tuple[list[RequestResult], float, int]:
        transport = httpx.MockTransport(handle)
        async with httpx.AsyncClient(base_url="http://test", transport=transport) as client:
            bodies = search_bodies(["a", "b", "c"], mode="bm25", rerank=False)
            return await run_load(client, bodies, concurrency=4, requests=10, offset=1)

    results, wall, reported = asyncio.run(go())
    assert len(results) == 10
    assert most == reported == 4
    assert sorted(seen) == sorted(["b", "c", "a"] * 3 + ["b"])  # cycled from the offset
    point = summarize(results, concurrency=4, seconds=wall, max_in_flight=reported)
    assert (point.ok, point.errors, point.encode_cache_hits, point.server_p50_ms) == (
        10, 0, 1.0, 5.0)


def test_errors_and_refusals_are_counted_not_timed() -> None:
    calls = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            return httpx.Response(503, json={"detail": "search backend failed"})
        if calls % 4 == 0:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"degraded": calls == 1, "timings_ms": {"total": 1.0}})

    results = _served(httpx.MockTransport(handle), concurrency=1, requests=8)
    point = summarize(results, concurrency=1, seconds=2.0, max_in_flight=1)
    # calls 3 and 6 answer 503, 4 and 8 are refused: 4 ok, one of them degraded
    assert point.status_counts == {"200": 4, "503": 2, "error": 2}
    assert (point.ok, point.errors, point.degraded) == (4, 4, 1)
    assert point.requests_per_s == pytest.approx(2.0)
    assert point.first_error is not None and "503" in point.first_error


def test_percentiles_are_nearest_rank_over_the_successful_requests() -> None:
    ok = [RequestResult(seconds=s / 1000, status=200) for s in range(1, 101)]
    failed = [RequestResult(seconds=99.0, status=500, error="HTTP 500")]
    point = summarize(ok + failed, concurrency=16, seconds=10.0, max_in_flight=16)
    assert (point.p50_ms, point.p95_ms, point.p99_ms) == pytest.approx((51.0, 95.0, 99.0))
    assert point.mean_ms == pytest.approx(50.5)


def test_a_point_with_no_answer_has_no_latency() -> None:
    point = summarize([RequestResult(1.0, None, "ReadTimeout: ")], concurrency=1, seconds=1.0,
                      max_in_flight=1)
    assert point.errors == 1 and point.p50_ms != point.p50_ms  # nan
