"""The processes of the scale benchmark (`bench/scale.py`), each started fresh:

- ``build``: builds one store from the synthetic catalog (`bench.scale_data`) and times it;
- ``serve``: only opens the store, then measures open time, RSS, vector / filtered vector /
  BM25 / hybrid + final-stage latency, recall@100 against the exact top 100, and upserts and
  deletes, with a ``watch`` process beside it;
- ``watch``: a second process over the same store that polls until a product written by
  ``serve`` shows up (or goes), so visibility in another process is measured.

Each prints one JSON object as its last line. Query encoding is excluded everywhere: query
vectors are precomputed (`LookupEncoder`), so hybrid + final is retrieval, fusion, fetching the
products, the learned final stage and the post-processors.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import percentile
from bench.scale_data import (
    PRODUCT_NOISE,
    Plan,
    QuerySet,
    Source,
    SyntheticProducts,
    perturb,
    row_of,
    synthetic_product,
)
from indexer.encoder import BiEncoder
from indexer.local_store import LocalStore
from indexer.opensearch_store import OpenSearchStore
from indexer.settings import IndexerSettings
from indexer.store import Filters, VectorStore

EXACT = 10**12
WARMUP = 10
VISIBLE_TIMEOUT_S = 60.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """VmRSS and VmHWM (peak) of a process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))


def rss_split_mb() -> tuple[float, float]:
    """This process's resident memory in MB: anonymous (its own), and file-backed (pages of
    memory-mapped files, which the kernel can drop and read again)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("RssAnon", float("nan")), fields.get("RssFile", float("nan"))


def rss_by_file_mb(top: int = 8) -> dict[str, float]:
    """Resident MB per memory-mapped file of this process (the largest ``top``)."""
    sizes: dict[str, float] = {}
    name = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and len(parts) >= 5 and ":" not in parts[0]:
            name = parts[5] if len(parts) > 5 else ""
        elif parts and parts[0] == "Rss:" and name.startswith("/"):
            sizes[Path(name).name] = sizes.get(Path(name).name, 0.0) + int(parts[1]) / 1024
    return dict(sorted(sizes.items(), key=lambda item: -item[1])[:top])


def exact_supported() -> bool:
    """Whether this LocalStore takes ``exact_below`` (an approximate index); today's is exact."""
    return "exact_below" in inspect.signature(LocalStore.__init__).parameters


def open_store(kind: str, location: str, *, exact: bool = False) -> VectorStore:
    if kind == "opensearch":
        return OpenSearchStore(IndexerSettings(), location)
    if exact and exact_supported():
        return LocalStore(Path(location), exact_below=EXACT)  # type: ignore[call-arg]
    return LocalStore(Path(location))


class LookupEncoder(BiEncoder):
    """A packaged `BiEncoder` that loads no model and answers queries from a table."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.table = table

    @property
    def model(self) -> object:  # type: ignore[override]
        return object()

    def encode_query(self, text: str) -> np.ndarray:
        return self.table[text]


class Printed:
    """Build progress on stderr every tenth of the catalog."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.next = total, 0, total // 10
        self.started = time.perf_counter()

    def start(self, phase: object, total: int | None) -> None:
        pass

    def advance(self, items: int) -> None:
        self.done += items
        if self.done >= self.next:
            self.next += max(1, self.total // 10)
            log(f"  written {self.done:,}/{self.total:,} "
                f"({time.perf_counter() - self.started:.0f} s)")

    def finish(self) -> None:
        pass


def build(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    source, plan = Source.load(Path(args.source)), Plan.load(work / "plan.npz")
    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    titles = np.load(work / "title_vectors.npy", mmap_mode="r")
    store = open_store(args.store, args.location)
    started = time.perf_counter()
    store.replace_all(SyntheticProducts(source, plan), vectors, title_vectors=titles,
                      metadata={"synthetic_from": source.name}, progress=Printed(len(plan)))
    seconds = time.perf_counter() - started
    store.close()
    return {"build_s": seconds, "build_peak_rss_mb": rss_mb()[1]}


def _latencies(run: Any, count: int) -> list[float]:
    for q in range(min(WARMUP, count)):
        run(q)
    out = []
    for q in range(count):
        started = time.perf_counter()
        run(q)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "count": len(values)}


def _filters(queries: QuerySet, q: int) -> Filters | None:
    brand, prices = queries.brands[q], queries.price_ranges[q]
    if brand is None and prices is None:
        return None
    low, high = (None, None) if prices is None else prices
    return Filters(brand=None if brand is None else [brand], price_min=low, price_max=high)


def limit_threads() -> None:
    """Cap BLAS threads as `shoprank serve` does (``SHOPRANK_BLAS_THREADS``, default 1)."""
    from plugin.components import limit_blas_threads
    from plugin.settings import Settings

    limit_blas_threads(Settings().blas_threads)


def serve(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    limit_threads()
    result: dict[str, Any] = {"rss_before_open_mb": rss_mb()[0]}
    queries = QuerySet.load(work / "queries")
    started = time.perf_counter()
    store = open_store(args.store, args.location)
    count = store.count()
    store.search_vector(queries.vectors[0], 100)
    result["open_s"] = time.perf_counter() - started
    result["count"] = count
    result["rss_open_mb"] = rss_mb()[0]
    n = len(queries.texts)
    hits: list[list[str]] = [[] for _ in range(n)]
    filtered: list[list[str]] = [[] for _ in range(n)]
    with_filter = [q for q in range(n) if _filters(queries, q) is not None]

    def vector(q: int) -> None:
        hits[q] = [h.product_id for h in store.search_vector(queries.vectors[q], 100)]

    def vector_filtered(q: int) -> None:
        q = with_filter[q]
        found = store.search_vector(queries.vectors[q], 100, _filters(queries, q))
        filtered[q] = [h.product_id for h in found]

    result["vector_ms"] = _summary(_latencies(vector, n))
    result["filtered_vector_ms"] = _summary(_latencies(vector_filtered, len(with_filter)))
    result["bm25_ms"] = _summary(_latencies(lambda q: store.search_bm25(queries.texts[q], 100), n))
    hybrid, stages = _hybrid_final(store, queries)
    result["hybrid_final_ms"] = _summary(hybrid)
    result["hybrid_final_stage_p50_ms"] = stages
    result["second_pass"] = {  # the same queries again: what they need is in memory now
        "vector_ms": _summary(_latencies(vector, n)),
        "filtered_vector_ms": _summary(_latencies(vector_filtered, len(with_filter))),
        "hybrid_final_ms": _summary(_hybrid_final(store, queries)[0]),
    }
    result["rss_mb"], result["rss_peak_mb"] = rss_mb()
    result["rss_anon_mb"], result["rss_file_mb"] = rss_split_mb()
    result["rss_by_file_mb"] = rss_by_file_mb()
    if args.store == "opensearch":
        result.update(_opensearch_node(store))
    result.update(_recall(work, hits, filtered, with_filter))
    result["approximate"] = args.store == "opensearch" or exact_supported()
    if args.store == "local" and exact_supported():
        result["recall_at_100_vs_exact_store"] = _recall_vs_exact_store(args, queries, hits)
    result.update(_writes(args, store))
    store.close()
    return result


def _hybrid_final(store: VectorStore, queries: QuerySet,
                  ) -> tuple[list[float], dict[str, float]]:
    """Wall milliseconds of each hybrid + final search, and the p50 of each stage the
    pipeline timed (``encode`` is a table look-up here)."""
    from plugin.components import build_final_rankers
    from plugin.models import SearchRequest
    from plugin.pipeline import SearchPipeline
    from plugin.settings import Settings

    table = dict(zip(queries.texts, queries.vectors, strict=True))
    rankers = build_final_rankers(Settings(reranker="none"), has_reranker=False)
    if rankers.ranker is None and rankers.fallback is None:
        raise SystemExit("no packaged final stage to time")
    pipeline = SearchPipeline(store, LookupEncoder(table), None, rankers=rankers)
    texts = list(table)

    laps: dict[str, list[float]] = {}

    def search(q: int) -> None:
        response = pipeline.search(SearchRequest(query=texts[q]))
        assert response.final_stage != "none", response.final_stage
        for stage, ms in response.timings_ms.items():
            laps.setdefault(stage, []).append(ms)

    try:
        wall = _latencies(search, len(texts))
    finally:
        pipeline.retriever.close()
    return wall, {stage: percentile(values, 50) for stage, values in laps.items()}


def _recall(work: Path, hits: list[list[str]], filtered: list[list[str]],
            with_filter: list[int]) -> dict[str, Any]:
    """Recall@100 of the store's answers against the exact top 100 (brute force)."""
    with np.load(work / "truth.npz", allow_pickle=False) as truth:
        plain, masked = truth["plain"], truth["filtered"]
    recall = [len({row_of(p) for p in hits[q]} & set(plain[q].tolist())) / len(plain[q])
              for q in range(len(hits))]
    filtered_recall = []
    for q in with_filter:
        want = {int(r) for r in masked[q] if r >= 0}  # padded with -1
        if want:
            filtered_recall.append(len({row_of(p) for p in filtered[q]} & want) / len(want))
    return {
        "recall_at_100": float(np.mean(recall)),
        "recall_at_100_min": float(np.min(recall)),
        "filtered_recall_at_100": float(np.mean(filtered_recall)) if filtered_recall else None,
    }


def _recall_vs_exact_store(args: argparse.Namespace, queries: QuerySet,
                           hits: list[list[str]]) -> float:
    """Recall@100 against a second store over the same folder that searches exactly (the
    brute force above reads the vectors as written; this reads them as the store keeps them)."""
    exact = open_store(args.store, args.location, exact=True)
    recall = []
    for q, found in enumerate(hits):
        want = {h.product_id for h in exact.search_vector(queries.vectors[q], 100)}
        recall.append(len(set(found) & want) / max(1, len(want)))
    exact.close()
    return float(np.mean(recall))


def _opensearch_node(store: VectorStore) -> dict[str, Any]:
    """The OpenSearch node's RSS (its JVM, read from /proc on this machine) and the index's
    primary store size."""
    assert isinstance(store, OpenSearchStore)
    out: dict[str, Any] = {}
    info = store.client.nodes.info(metric="process,jvm")
    for node in info["nodes"].values():
        pid = node["process"]["id"]
        out["node_heap_mb"] = node["jvm"]["mem"]["heap_max_in_bytes"] / 2**20
        try:
            out["node_rss_mb"] = rss_mb(pid)[0]
        except OSError:
            out["node_rss_mb"] = None
    stats = store.client.indices.stats(index=store.alias, metric="store")
    out["disk_bytes"] = stats["_all"]["primaries"]["store"]["size_in_bytes"]
    return out


class Watcher:
    """A ``watch`` process over the same store."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.scale_probe", "watch", "--store", args.store,
             "--location", args.location],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None and self.process.stdin is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.open_s = float(json.loads(self.stdout.readline())["open_s"])

    def start(self, product_id: str, vector: np.ndarray, *, present: bool) -> None:
        """Have the watcher poll until ``product_id`` is (or is no longer) found."""
        self.stdin.write(json.dumps({"id": product_id, "vector": vector.tolist(),
                                     "present": present}) + "\n")
        self.stdin.flush()
        assert json.loads(self.stdout.readline())["polling"]

    def seen_at(self) -> float | None:
        """The watcher's monotonic clock when it saw the change (None: not within the timeout)."""
        answer = json.loads(self.stdout.readline())
        return None if answer["seen_at"] is None else float(answer["seen_at"])

    def close(self) -> None:
        self.stdin.close()
        self.process.wait(timeout=30)


def _visible_here(store: VectorStore, product_id: str, vector: np.ndarray, present: bool,
                  ) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < VISIBLE_TIMEOUT_S:
        if (product_id in {h.product_id for h in store.search_vector(vector, 10)}) == present:
            return time.monotonic() - started
        time.sleep(0.001)
    return None


class WriteTimes:
    """Per write: the call's milliseconds, and the seconds until this process and another
    one see the change, counted from the call's return and (the other process) its start."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.here: list[float | None] = []
        self.other: list[float | None] = []
        self.other_from_start: list[float | None] = []

    def summary(self) -> dict[str, Any]:
        return {"call_ms": _summary(self.calls), "visible_here_s_max": _worst(self.here),
                "visible_other_s_p50": _p50(self.other),
                "visible_other_s_max": _worst(self.other),
                "visible_other_from_start_s_p50": _p50(self.other_from_start),
                "visible_other_from_start_s_max": _worst(self.other_from_start)}


def _worst(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else max(v for v in values if v is not None)


def _p50(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return percentile(known, 50) if known and len(known) == len(values) else None


def _writes(args: argparse.Namespace, store: VectorStore) -> dict[str, Any]:
    """Single upserts, a batch, single deletes and a batch delete, each with the time until
    this process and another one see it."""
    work = Path(args.work)
    source, plan = Source.load(Path(args.source)), Plan.load(work / "plan.npz")
    rng = np.random.default_rng([args.seed, 4])
    rows = rng.integers(0, len(plan), args.upserts + args.batch)
    products = [synthetic_product(source, plan, int(r), id_=f"up-{k}")
                for k, r in enumerate(rows)]
    src = plan.source_rows[rows]
    vectors = perturb(source.vectors[src], PRODUCT_NOISE, rng)
    titles = perturb(source.title_vectors[src], PRODUCT_NOISE, rng)
    watcher = Watcher(args)

    def write(times: WriteTimes, call: Any, k: int, present: bool) -> None:
        watcher.start(products[k].id, vectors[k], present=present)
        started = time.monotonic()
        call()
        returned = time.monotonic()
        times.calls.append((returned - started) * 1000)
        times.here.append(_visible_here(store, products[k].id, vectors[k], present))
        seen = watcher.seen_at()
        times.other.append(None if seen is None else max(0.0, seen - returned))
        times.other_from_start.append(None if seen is None else seen - started)

    singles, last = range(args.upserts), args.upserts + args.batch - 1
    batch = slice(args.upserts, last + 1)
    upserts, batch_upsert, deletes, batch_delete = (WriteTimes() for _ in range(4))
    for k in singles:
        write(upserts, lambda k=k: store.upsert([products[k]], vectors[k : k + 1],
                                                titles[k : k + 1]), k, True)
    write(batch_upsert, lambda: store.upsert(products[batch], vectors[batch], titles[batch]),
          last, True)
    for k in singles:
        write(deletes, lambda k=k: store.delete([products[k].id]), k, False)
    write(batch_delete, lambda: store.delete([p.id for p in products[batch]]), last, False)
    watcher.close()
    return {"upsert": upserts.summary(), "upsert_batch": batch_upsert.summary(),
            "delete": deletes.summary(), "delete_batch": batch_delete.summary(),
            "batch_size": args.batch, "watch_open_s": watcher.open_s}


def watch(args: argparse.Namespace) -> None:
    limit_threads()
    started = time.perf_counter()
    store = open_store(args.store, args.location)
    store.count()
    print(json.dumps({"open_s": time.perf_counter() - started}), flush=True)
    for line in sys.stdin:
        order = json.loads(line)
        vector = np.asarray(order["vector"], dtype=np.float32)
        print(json.dumps({"polling": True}), flush=True)
        seen: float | None = None
        began = time.monotonic()
        while time.monotonic() - began < VISIBLE_TIMEOUT_S:
            found = order["id"] in {h.product_id for h in store.search_vector(vector, 10)}
            if found == order["present"]:
                seen = time.monotonic()
                break
            time.sleep(0.001)
        print(json.dumps({"seen_at": seen}), flush=True)
    store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=("build", "serve", "watch"))
    parser.add_argument("--store", choices=("local", "opensearch"), required=True)
    parser.add_argument("--location", required=True, help="index folder, or OpenSearch index")
    parser.add_argument("--work", help="folder with the plan, vectors, queries and truth")
    parser.add_argument("--source", help="the source index folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--upserts", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.role == "watch":
        watch(args)
        return
    result = build(args) if args.role == "build" else serve(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
