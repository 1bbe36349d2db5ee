"""``shoprank serve --workers 2`` for real: two uvicorn processes on one port, sessions in the
real Redis that scripts/test starts, and ``GET /metrics`` adding up both processes' counts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, demo_slice
from tests.plugin.fault_harness import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_URL = os.environ.get("SHOPRANK_REDIS_URL", "redis://127.0.0.1:16379/0")


def searches_counted(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "shoprank_search_total":
                return float(sample.value)
    raise AssertionError(f"no shoprank_search_total in:\n{text}")


def test_two_workers_share_sessions_and_add_up_their_metrics(tmp_path: Path) -> None:
    records = list(demo_slice(40))
    catalog = tmp_path / "slice.jsonl"
    catalog.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    env = {**os.environ, "SHOPRANK_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1",
           "SHOPRANK_INDEX": "workers", "SHOPRANK_RERANKER": "none"}
    subprocess.run([sys.executable, "-m", "plugin", "reindex", "--catalog", str(catalog)],
                   env=env, cwd=REPO, check=True, capture_output=True, timeout=600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "plugin", "serve", "--workers", "2", "--port", str(port),
             "--session-store", "redis", "--redis-url", REDIS_URL],
            env=env, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready in 300 s:\n{log.read_text()}"
            time.sleep(0.5)

        session = f"workers-{uuid.uuid4().hex[:8]}"
        event = {"type": "add_to_cart", "session_id": session, "product_id": records[3]["id"],
                 "timestamp": datetime.now(UTC).isoformat()}
        assert httpx.post(f"{url}/events", json={"events": [event] * 3},
                          timeout=30).status_code == 200
        bodies = [{"query": str(r["title"])[:40], "k": 5, "session_id": session}
                  for r in records[:12]]
        with ThreadPoolExecutor(4) as pool:  # at once, so both workers take some
            answers = list(pool.map(
                lambda body: httpx.post(f"{url}/search", json=body, timeout=120), bodies))
        assert [a.status_code for a in answers] == [200] * 12
        # Whichever worker took the events, every search read the session from Redis.
        assert all(a.json()["personalized"] for a in answers)
        # Whichever worker answers the scrape, it counts every worker's searches.
        assert [searches_counted(url) for _ in range(6)] == [12.0] * 6
    finally:
        server.terminate()
        server.wait(timeout=60)
    output = log.read_text()
    found = re.search(r"their metrics in (\S+)", output)
    assert found is not None, output
    assert not Path(found.group(1)).exists()  # the serve command removed its folder
