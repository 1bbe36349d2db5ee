"""A three-node OpenSearch cluster keeps serving while one node is killed, and loses nothing.

The cluster is this module's own (`scripts/opensearch cluster-start`, its own home folder and
ports, 256 MB heaps), so nothing else in the suite shares it. Several URLs and the client's
retry on another node are tested here as well, without a server where none is needed.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from opensearchpy import OpenSearch
from pydantic import ValidationError

from indexer.errors import StoreError, StoreUnavailableError
from indexer.opensearch_client import connect, missing_documents, missing_shards
from indexer.opensearch_store import OpenSearchStore
from indexer.schema import Product
from indexer.settings import IndexerSettings
from tests.conftest import demo_slice
from tests.indexer.store_factories import OPENSEARCH_URL

REPO = Path(__file__).resolve().parents[2]
NODES = 3
HEAP = os.environ.get("SHOPRANK_TEST_CLUSTER_HEAP", "256m")
DIM = 8
CATALOG_SIZE = 200
#: Single words, so products written during the test (titled "zqxwrite N") never match them.
QUERIES = ["waterproof", "silver", "casual", "disposable", "replacement", "glass"]
SEARCH_THREADS = 3
#: Pause between one thread's searches: a bounded load (at most ~3 x 20 searches/s).
SEARCH_PAUSE_S = 0.05
WRITE_BATCH = 5


# -- several URLs, without a server --------------------------------------------------------


def test_one_url_connects_as_before() -> None:
    settings = IndexerSettings(opensearch_url="http://127.0.0.1:9200")
    transport = connect(settings).transport
    assert settings.opensearch_hosts == ["http://127.0.0.1:9200"]
    assert len(transport.connection_pool.connections) == 1
    assert (transport.max_retries, transport.retry_on_timeout) == (1, False)


def test_several_urls_are_several_nodes_each_tried_once() -> None:
    settings = IndexerSettings(
        opensearch_url="http://127.0.0.1:9201, http://127.0.0.1:9202,https://db.example:443/os"
    )
    transport = connect(settings).transport
    hosts = sorted(c.host for c in transport.connection_pool.connections)
    assert hosts == ["http://127.0.0.1:9201", "http://127.0.0.1:9202", "https://db.example:443"]
    assert (transport.max_retries, transport.retry_on_timeout) == (2, True)
    assert not transport.sniff_on_start and not transport.sniff_on_connection_fail


#: The answer of a k-NN search whose shard copy's node was SIGKILLed between the query and
#: the fetch phase (recorded from this module's cluster test; hits shortened).
PARTIAL_ANSWER = {
    "_shards": {"total": 3, "successful": 2, "skipped": 0, "failed": 1, "failures": [{
        "shard": 0, "index": "shoprank-test-cluster-v20261207t064356914788-0d0b47",
        "node": "CjY4BBfZQci6EWnIVZGfJQ",
        "reason": {"type": "node_disconnected_exception",
                   "reason": "[shoprank-cluster-9231-node-3][127.0.0.1:9333]"
                             "[indices:data/read/search[phase/fetch/id]] disconnected"}}]},
    "hits": {"hits": [{"_id": "p1", "_score": 0.9}]},
}


def test_an_answer_missing_a_shard_is_recognised() -> None:
    problem = missing_shards(PARTIAL_ANSWER)
    assert problem is not None and problem.startswith("2 of 3 shards answered")
    assert "phase/fetch/id]] disconnected" in problem
    assert missing_shards({"_shards": {"total": 3, "successful": 3, "failed": 0}}) is None
    assert missing_documents({"docs": [{"_id": "a", "found": False}]}) is None
    unread = {"docs": [{"_id": "a", "found": True}, {"_id": "b", "error": {
        "type": "no_shard_available_action_exception", "reason": "No shard available"}}]}
    assert missing_documents(unread) == "1 document(s) unread: No shard available"


@pytest.mark.parametrize("url", ["http://a:1,", "http://a:1,,http://b:2", "http://a:1 http://b:2",
                                 "ftp://a:1", "http://a:1,b:2"])
def test_a_malformed_url_list_is_rejected_naming_the_setting(url: str) -> None:
    with pytest.raises(ValidationError, match="opensearch_url"):
        IndexerSettings(opensearch_url=url)


def test_every_node_refusing_is_a_clear_unavailable_error() -> None:
    settings = IndexerSettings(
        opensearch_url=f"http://127.0.0.1:{_free_port()},http://127.0.0.1:{_free_port()}",
        opensearch_timeout_s=2,
    )
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        OpenSearchStore(settings, "x").count()


@pytest.mark.integration
def test_a_request_goes_to_the_next_node_when_one_refuses() -> None:
    """A dead first node costs a retry, not an error (the live node is the suite's own)."""
    settings = IndexerSettings(opensearch_url=f"http://127.0.0.1:{_free_port()},{OPENSEARCH_URL}")
    store = OpenSearchStore(settings, f"absent-{random.randrange(1 << 30)}")
    assert [store.exists() for _ in range(4)] == [False] * 4
    store.close()


# -- the cluster ---------------------------------------------------------------------------


@dataclass
class Cluster:
    home: Path
    http_port: int
    env: dict[str, str]

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.http_port + i}" for i in range(NODES)]

    def script(self, *args: str, timeout: float = 420) -> str:
        done = subprocess.run([str(REPO / "scripts" / "opensearch"), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            logs = "\n".join(_tail(self.home / f"node-{n}" / "opensearch.log")
                           for n in range(1, NODES + 1))
            pytest.fail(f"scripts/opensearch {' '.join(args)} exited {done.returncode}:\n"
                        f"{done.stdout}{done.stderr}\n{logs}")
        return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("opensearch-cluster")
    http_port, transport_port = _cluster_ports()
    env = {k: v for k, v in os.environ.items()
           if k not in {"OPENSEARCH_PORT", "OPENSEARCH_HEAP", "OPENSEARCH_TRANSPORT_PORT"}}
    env.update(OPENSEARCH_HOME_DIR=str(home), OPENSEARCH_START_TIMEOUT="300")
    made = Cluster(home, http_port, env)
    try:
        made.script("cluster-start", "--nodes", str(NODES), "--heap", HEAP,
                    "--port", str(http_port), "--transport-port", str(transport_port))
        yield made
    finally:
        subprocess.run([str(REPO / "scripts" / "opensearch"), "cluster-stop"], env=env,
                       capture_output=True, timeout=120, check=False)


@dataclass
class Load:
    """What the searching and writing threads saw."""

    searches: int = 0
    failed: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    slowest_s: float = 0.0
    acknowledged: list[str] = field(default_factory=list)
    write_failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_node_loses_no_search_and_no_acknowledged_write(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    settings = IndexerSettings(
        store="opensearch", opensearch_url=",".join(cluster.urls), opensearch_timeout_s=30,
        opensearch_alias_prefix="shoprank-test", opensearch_shards=3, opensearch_replicas=1,
    )
    store = OpenSearchStore(settings, "cluster", dimension=DIM)
    rng = np.random.default_rng(11)
    products = [Product.model_validate(r) for r in demo_slice(CATALOG_SIZE)]
    store.replace_all(products, _unit(rng.normal(size=(CATALOG_SIZE, DIM))))
    admin = connect(settings)
    health = _wait_green(admin, store.alias)
    assert health["status"] == "green", health
    layout = admin.indices.get_settings(index=store.alias)
    (index_settings,) = (body["settings"]["index"] for body in layout.values())
    assert (index_settings["number_of_shards"], index_settings["number_of_replicas"]) == ("3", "1")
    expected = {q: {h.product_id for h in store.search_bm25(q, CATALOG_SIZE)} for q in QUERIES}
    assert all(expected.values())

    load, stop = Load(), threading.Event()
    workers = [threading.Thread(target=_search, args=(store, expected, load, stop, seed))
               for seed in range(SEARCH_THREADS)]
    workers.append(threading.Thread(target=_write, args=(store, load, stop)))
    for worker in workers:
        worker.start()
    try:
        time.sleep(3)
        victim = _cluster_manager(admin)
        pid = int(cluster.script("node-pid", str(victim)).strip())
        acked_before_kill = len(load.acknowledged)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(8)
        acked_while_down = len(load.acknowledged) - acked_before_kill
        restarted_at = time.monotonic()
        cluster.script("node-start", str(victim))
        joined_after_s = time.monotonic() - restarted_at
        health = _wait_green(admin, store.alias)
        green_after_s = time.monotonic() - restarted_at
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
    down_s = restarted_at - killed_at
    asked_again = sum("partial answer" in r.getMessage() for r in caplog.records)

    print(f"\ncluster kill: node {victim} (the elected cluster manager) SIGKILLed for "
          f"{down_s:.1f} s, then restarted; {load.searches} searches, {len(load.failed)} failed, "
          f"{len(load.incomplete)} incomplete ({asked_again} partial answers asked again), "
          f"slowest {load.slowest_s:.2f} s; "
          f"{len(load.acknowledged)} writes acknowledged ({acked_before_kill} before the kill, "
          f"{acked_while_down} while the node was down), {len(load.write_failures)} refused; "
          f"node back in the cluster {joined_after_s:.1f} s and green {green_after_s:.1f} s "
          f"after the restart began")
    assert health["status"] == "green", health
    assert load.searches > 0 and acked_before_kill > 0 and acked_while_down > 0
    assert load.failed == [], load.failed[:5]
    assert load.incomplete == [], load.incomplete[:5]
    found = store.get_many(load.acknowledged)
    assert sorted(found) == sorted(load.acknowledged), "acknowledged writes were lost"
    assert store.count() >= CATALOG_SIZE + len(load.acknowledged)
    store.drop()
    store.close()
    admin.close()


def _search(store: OpenSearchStore, expected: dict[str, set[str]], load: Load,
            stop: threading.Event, seed: int) -> None:
    """Search until stopped; every answer must hold every product that matches (no shard lost)."""
    rng = random.Random(seed)
    while not stop.is_set():
        query = rng.choice(QUERIES)
        started = time.monotonic()
        try:
            if rng.random() < 0.5:
                got = {h.product_id for h in store.search_bm25(query, CATALOG_SIZE)}
                shown = sorted(got)[:10]
                fetched = store.get_many(shown)  # as the pipeline does for the hits it shows
                problem = "" if got == expected[query] else f"{query!r}: {len(got)} of " \
                                                            f"{len(expected[query])} hits"
                if len(fetched) != len(shown):
                    problem += f" {len(fetched)} of {len(shown)} products fetched"
            else:
                vector = _unit(np.random.default_rng(rng.randrange(1 << 30)).normal(size=(1, DIM)))
                hits = store.search_vector(vector[0], 10)
                problem = "" if len(hits) == 10 else f"k-NN: {len(hits)} of 10 hits"
        except StoreError as e:
            with load.lock:
                load.searches += 1
                load.failed.append(str(e))
            continue
        with load.lock:
            load.searches += 1
            load.slowest_s = max(load.slowest_s, time.monotonic() - started)
            if problem:
                load.incomplete.append(problem)
        stop.wait(SEARCH_PAUSE_S)


def _write(store: OpenSearchStore, load: Load, stop: threading.Event) -> None:
    """Upsert small batches until stopped; an id counts once `upsert` returned for it."""
    rng = np.random.default_rng(5)
    batch = 0
    while not stop.is_set():
        ids = [f"w-{batch}-{i}" for i in range(WRITE_BATCH)]
        products = [Product.model_validate({"id": pid, "title": f"zqxwrite {pid}"}) for pid in ids]
        try:
            store.upsert(products, _unit(rng.normal(size=(WRITE_BATCH, DIM))))
        except StoreError as e:
            with load.lock:
                load.write_failures.append(str(e))
        else:
            with load.lock:
                load.acknowledged.extend(ids)
        batch += 1
        stop.wait(0.2)


def _wait_green(admin: OpenSearch, index: str) -> dict[str, object]:
    """Cluster health once every node is back and every copy of ``index`` is assigned."""
    health: dict[str, object] = admin.cluster.health(
        index=index, params={"wait_for_status": "green", "wait_for_nodes": str(NODES),
                             "timeout": "180s"}, request_timeout=200,
    )
    return health


def _cluster_manager(admin: OpenSearch) -> int:
    """The number N of the elected cluster manager (node names end in ``-node-N``)."""
    rows = admin.cat.cluster_manager(format="json")
    return int(rows[0]["node"].rsplit("-", 1)[1])


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _cluster_ports() -> tuple[int, int]:
    """HTTP and transport base ports: the environment's, or two free blocks of `NODES` ports."""
    http = os.environ.get("SHOPRANK_TEST_CLUSTER_PORT")
    transport = os.environ.get("SHOPRANK_TEST_CLUSTER_TRANSPORT_PORT")
    if http and transport:
        return int(http), int(transport)
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 30000, 10)
        if all(_port_is_free(base + i) and _port_is_free(base + 100 + i) for i in range(NODES)):
            return base, base + 100
    raise RuntimeError("found no free ports for the test cluster")


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(log: Path, lines: int = 30) -> str:
    if not log.exists():
        return ""
    return f"--- {log} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
