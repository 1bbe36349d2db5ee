"""One benchmark command: the whole CPU suite, each figure next to a naive baseline.

    python3 -m bench.suite [--quick] [--out-dir bench/results] [--checkpoint DIR]
                           [--reranker onnx|cross-encoder] [--home DIR] [--index NAME]
                           [--sections indexing query rerank http]
                           [--rerank-max-length TOKENS] [--rerank-http-requests N]

Four measurements, each against a naive baseline measured in the same run (bench/naive_server.py
holds the baselines):

- indexing (products/s, Icecat): `indexer.indexing.index_products` with the encoder `shoprank
  reindex` builds, into a local store under a temporary SHOPRANK_HOME, vs. one
  ``SentenceTransformer.encode([text])`` per product at the model's full length plus the same
  store write;
- query encoding (ms, ESCI + Icecat queries): `BiEncoder.encode_query` the first time a query is
  seen, and again from its cache (two lines, never mixed), vs. ``encode([query])`` per call; and
  the cache's hit rate on a repeated stream;
- reranking (pairs/s, ms) of 50 and 100 hybrid-retrieved ESCI candidates: `InProcessCrossEncoder`
  and, when the module exists, the ONNX INT8 reranker (plus, with ``--rerank-max-length``, the
  same graph reading fewer tokens per pair), vs. ``CrossEncoder.predict`` at max_length 512;
- HTTP (ms, errors): `shoprank serve` and `python3 -m bench.naive_server`, both running, loaded in
  turn by bench/http_load.py, for bm25, vector, hybrid and hybrid+rerank at concurrency 1, 4, 16;
  then the nDCG@10 of each server's answers to the judged ESCI dev queries, with and without
  reranking (the quality at the settings the latency rows measure).

Without ``--checkpoint`` both sides rank with the shipped cross-encoder (plugin/artifacts/
reranker), and ours is `shoprank serve` as it runs out of the box (ONNX INT8, its window, the
packaged final stage).

Settings in the environment (``SHOPRANK_DOCUMENT_BACKEND``, ``SHOPRANK_QUERY_BACKEND``, ...)
change what "ours" runs; the report records the non-secret ones it knows (`RECORDED_SETTINGS`).
The ESCI index is built once in ``--home`` (default .cache/bench-suite) with `shoprank reindex`
if it is missing. Writes ``suite-<date>[-quick].{md,json}`` to ``--out-dir``; progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from bench.http_load import (
    Server,
    free_port,
    measure_point,
    running_server,
    search_bodies,
    server_metrics,
)
from bench.machine import cpu_model, percentile
from bench.naive_server import NaiveCrossEncoder, NaiveQueryEncoder, load_naive_bi_encoder
from bench.triton_cpu import default_checkpoint, max_difference, measure, summarize

if TYPE_CHECKING:
    from reranker.metrics import Qrels

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
ICECAT_CATALOG = DATA / "icecat" / "products.jsonl.gz"
ESCI_CATALOG = DATA / "esci-us" / "products.jsonl.gz"
ESCI_QUERIES = DATA / "esci-us" / "queries.tsv"
ESCI_QRELS = DATA / "esci-us" / "qrels.txt"
ICECAT_QUERIES = DATA / "icecat" / "queries.tsv"
DEFAULT_HOME = REPO / ".cache" / "bench-suite"
DEFAULT_INDEX = "eval-esci-us"
#: Seconds a quality request may take (the naive server reranks at full length).
QUALITY_TIMEOUT_S = 300.0
SECTIONS = ("indexing", "query", "rerank", "http")
#: mode label -> (retrieval mode, rerank)
HTTP_MODES: dict[str, tuple[str, bool]] = {
    "bm25": ("bm25", False), "vector": ("vector", False), "hybrid": ("hybrid", False),
    "hybrid+rerank": ("hybrid", True),
}
Scorer = Callable[[str, Sequence[str]], Sequence[float]]
#: The settings a report records when they are in the environment (none can hold a secret).
RECORDED_SETTINGS = tuple(f"SHOPRANK_{name}" for name in (
    "QUERY_BACKEND", "DOCUMENT_BACKEND", "ENCODER_PATH", "ENCODER_MAX_SEQ_LENGTH",
    "ENCODE_BATCH_SIZE", "QUERY_CACHE_SIZE", "STORE", "RERANKER", "RERANKER_PRECISION",
    "RERANKER_MAX_LENGTH", "CANDIDATES", "RERANK_WINDOW", "RERANK_BUDGET_MS",
    "MIN_RERANK_WINDOW", "MAX_CONCURRENT_RERANKS", "CONCURRENT_RETRIEVAL", "FINAL_RANKER",
    "FAIRNESS", "SESSION_STORE", "PERSONALIZATION_WEIGHT", "OUT_OF_STOCK"))
_STARTED = time.perf_counter()


@dataclass(frozen=True)
class Sizes:
    """How much each measurement repeats."""

    index_products: int
    naive_index_products: int
    queries: int | None  # None: all
    stream: int
    rerank_requests: int
    http_requests: int  # per point for bm25/vector/hybrid (at least 2 x concurrency)
    rerank_http_requests: int  # per point for hybrid+rerank (at least the concurrency)
    concurrency: tuple[int, ...]
    rerank_concurrency: tuple[int, ...]


FULL = Sizes(2000, 300, None, 2000, 6, 120, 4, (1, 4, 16), (1, 4, 16))
QUICK = Sizes(200, 30, 60, 500, 2, 40, 2, (1, 4, 16), (1, 4))


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:6.0f} s] {message}", file=sys.stderr, flush=True)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def describe_machine(command: str) -> dict[str, Any]:
    """What the numbers were measured on, before the first measurement."""
    import torch

    changed = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in (
            "torch", "onnxruntime", "sentence-transformers", "transformers", "numpy", "fastapi",
            "uvicorn", "httpx")},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_changed_files": len(changed.splitlines()) if changed != "unknown" else None,
        # Settings change what "ours" runs (backends, lengths): the command line alone does not
        # say. Only known, non-secret ones: URLs and keys can carry credentials.
        "shoprank_environment": {k: os.environ[k] for k in RECORDED_SETTINGS if k in os.environ},
    }


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def _ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "mean_ms": statistics.fmean(ms), "n": len(ms)}


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# --- indexing -----------------------------------------------------------------------------------

def bench_indexing(sizes: Sizes, scratch: Path) -> dict[str, Any]:
    from indexer.catalog import load_catalog
    from indexer.indexing import index_products
    from indexer.local_store import LocalStore
    from indexer.schema import product_to_text
    from indexer.settings import IndexerSettings
    from plugin.components import build_encoder

    products = load_catalog(ICECAT_CATALOG).products[: sizes.index_products]
    settings = IndexerSettings(home=scratch / "home")  # a temporary SHOPRANK_HOME
    encoder = build_encoder(settings)  # what `shoprank reindex` encodes with
    encoder.encode_query("warm up")  # the model loads outside the timing
    encoder.encode_texts(["warm up"])  # so does the ONNX export (SHOPRANK_DOCUMENT_BACKEND)
    tokenizer = encoder.model.tokenizer
    lengths = [len(ids) for ids in tokenizer(
        [product_to_text(p) for p in products], truncation=False)["input_ids"]]
    # The naive sample has ours' length mix: evenly spaced quantiles of the token counts.
    by_length = sorted(range(len(products)), key=lengths.__getitem__)
    count = min(sizes.naive_index_products, len(products))
    chosen = sorted(by_length[int((i + 0.5) * len(products) / count)] for i in range(count))
    naive_products = [products[i] for i in chosen]
    progress(f"indexing: ours, {len(products)} Icecat products")
    ours_s = _timed(lambda: index_products(
        LocalStore(settings.indexes_dir / "ours"), products, encoder))

    naive_model = load_naive_bi_encoder()
    naive_model.encode(["warm up"])
    naive_store = LocalStore(settings.indexes_dir / "naive")

    def naive_index() -> None:
        vectors = np.stack([
            naive_model.encode([product_to_text(p)], convert_to_numpy=True,
                               normalize_embeddings=True)[0]
            for p in naive_products
        ]).astype(np.float32)
        naive_store.replace_all(naive_products, vectors, encoder=encoder.stamp)

    progress(f"indexing: naive, {len(naive_products)} products one encode call each")
    naive_s = _timed(naive_index)

    def tokens(indices: Sequence[int], cap: int | None = None) -> float:
        return statistics.fmean(min(lengths[i], cap or lengths[i]) for i in indices)

    ours = len(products) / ours_s
    naive = len(naive_products) / naive_s
    everything = range(len(products))
    return {
        "catalog": str(ICECAT_CATALOG),
        "ours": {"products": len(products), "seconds": ours_s, "products_per_s": ours,
                 "mean_tokens_untruncated": tokens(everything),
                 "mean_tokens_encoded": tokens(everything, encoder.max_seq_length),
                 "method": f"index_products: BiEncoder ({settings.document_backend}) batch "
                           f"{settings.encode_batch_size}, "
                           f"max_seq_length {encoder.max_seq_length}, text and title "
                           "embeddings (the naive loop encodes texts only), + LocalStore write"},
        "naive": {"products": len(naive_products), "seconds": naive_s, "products_per_s": naive,
                  "mean_tokens_untruncated": tokens(chosen),
                  "mean_tokens_encoded": tokens(chosen, naive_model.max_seq_length),
                  "method": f"SentenceTransformer.encode([text]) per product, fp32, "
                            f"max_seq_length {naive_model.max_seq_length}, + the same "
                            "LocalStore.replace_all"},
        "ratio": ratio(ours, naive),
    }


# --- query encoding -----------------------------------------------------------------------------

def real_queries() -> list[str]:
    from reranker.metrics import load_queries

    seen: dict[str, None] = {}
    for path in (ESCI_QUERIES, ICECAT_QUERIES):
        for text in load_queries(path).values():
            seen.setdefault(" ".join(text.split()), None)
    return list(seen)


def zipf_stream(queries: Sequence[str], length: int, seed: int) -> list[str]:
    """``length`` draws with Zipf (s=1) popularity over ``queries`` in a seeded order."""
    rng = random.Random(seed)
    ranked = list(queries)
    rng.shuffle(ranked)
    weights = [1 / rank for rank in range(1, len(ranked) + 1)]
    return rng.choices(ranked, weights=weights, k=length)


def bench_query_encoding(sizes: Sizes, seed: int) -> dict[str, Any]:
    from indexer.encoder import BiEncoder
    from indexer.settings import IndexerSettings
    from plugin.components import build_encoder

    every = real_queries()
    rng = random.Random(seed)
    queries = rng.sample(every, sizes.queries) if sizes.queries else list(every)
    settings = IndexerSettings()
    ours, naive = build_encoder(settings), NaiveQueryEncoder()  # the server's encoder, naive
    ours.encode_query("warm up")
    naive.encode_query("warm up")
    ours.clear_cache()
    progress(f"query encoding: {len(queries)} queries, cold, ours and naive in turn")
    cold: list[float] = []
    plain: list[float] = []
    for number, query in enumerate(queries):
        pair: list[tuple[list[float], BiEncoder]] = [(cold, ours), (plain, naive)]
        for sink, encoder in pair if number % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            encoder.encode_query(query)
            sink.append(time.perf_counter() - start)
    cached: list[float] = []
    for query in queries:  # every one is in the cache now
        start = time.perf_counter()
        ours.encode_query(query)
        cached.append(time.perf_counter() - start)

    stream = zipf_stream(every, sizes.stream, seed)
    counting = BiEncoder(
        settings.encoder_path, batch_size=settings.encode_batch_size,
        max_seq_length=settings.encoder_max_seq_length, query_cache_size=settings.query_cache_size,
    )
    counting.encode_query("warm up")
    counting.clear_cache()
    counting.cache_misses = 0
    progress(f"query encoding: cache on a {len(stream)}-query Zipf stream")
    for query in stream:
        counting.encode_query(query)
    rows = {"ours_cold": _ms(cold), "ours_cached": _ms(cached), "naive": _ms(plain)}
    for name in ("ours_cold", "ours_cached"):
        rows[name]["p50_speedup"] = ratio(rows["naive"]["p50_ms"], rows[name]["p50_ms"])
        rows[name]["p95_speedup"] = ratio(rows["naive"]["p95_ms"], rows[name]["p95_ms"])
    return {
        "queries": len(queries), "query_sources": [str(ESCI_QUERIES), str(ICECAT_QUERIES)],
        **rows,
        "stream": {"length": len(stream), "distinct": len(set(stream)),
                   "cache_size": settings.query_cache_size,
                   "misses": counting.cache_misses,
                   "hit_rate": 1 - counting.cache_misses / len(stream),
                   "definition": f"Zipf s=1 popularity over the {len(every)} real queries "
                                 f"(seeded order), fresh cache"},
    }


# --- reranking ----------------------------------------------------------------------------------

def rerank_requests(
    store: Any, count: int, candidates: int, seed: int
) -> list[tuple[str, list[str]]]:
    """``count`` ESCI dev queries with their top ``candidates`` hybrid-retrieved product texts
    (the pairs the server would rerank); queries with fewer candidates are passed over."""
    from indexer.encoder import BiEncoder
    from indexer.retrieval import retrieve
    from indexer.schema import product_to_text
    from reranker.metrics import load_queries

    encoder = BiEncoder()
    texts = sorted(load_queries(ESCI_QUERIES).values())
    random.Random(seed).shuffle(texts)
    requests: list[tuple[str, list[str]]] = []
    for query in texts:
        found = retrieve(store, "hybrid", candidates, text=query,
                         vector=encoder.encode_query(query))
        products = store.get_many([c.product_id for c in found])
        chosen = [product_to_text(products[c.product_id]) for c in found
                  if c.product_id in products]
        if len(chosen) >= candidates:
            requests.append((query, chosen[:candidates]))
        if len(requests) == count:
            break
    return requests


def onnx_reranker(checkpoint: Path, scratch: Path) -> tuple[Any | None, Path | None, str]:
    """The ONNX INT8 reranker when its modules exist (else None), its folder, and a note."""
    try:
        from reranker.onnx_cross_encoder import OnnxCrossEncoder
        from reranker.onnx_export import export_onnx
    except ImportError as e:
        return None, None, f"skipped: the ONNX reranker is not available ({e})"
    from reranker.errors import RerankerError

    folder = scratch / "onnx-int8"
    try:
        export_onnx(checkpoint, folder, int8=True)
        model = OnnxCrossEncoder(folder, precision="int8")
        model.score("warm up", ["warm up"])
    except (OSError, RuntimeError, TypeError, ValueError, RerankerError) as e:
        return None, None, f"skipped: exporting or loading the ONNX INT8 reranker failed ({e})"
    return model, folder, f"OnnxCrossEncoder(precision='int8') on export_onnx(int8=True): {folder}"


def bench_rerank(
    sizes: Sizes, checkpoint: Path, store: Any, scratch: Path, seed: int,
    short_length: int | None = None,
) -> dict[str, Any]:
    from reranker.cross_encoder import InProcessCrossEncoder

    candidate_sizes = [50, 100]
    requests = rerank_requests(store, sizes.rerank_requests, max(candidate_sizes), seed)
    ours = InProcessCrossEncoder(checkpoint)
    naive = NaiveCrossEncoder(checkpoint)
    scorers: dict[str, Scorer] = {"ours": ours.score}
    onnx, onnx_folder, onnx_note = onnx_reranker(checkpoint, scratch)
    methods = {"ours": f"InProcessCrossEncoder, max_length {ours.max_length}",
               "onnx-int8": onnx_note}
    if onnx is not None:
        scorers["onnx-int8"] = onnx.score
        if short_length is not None and onnx_folder is not None:
            from reranker.onnx_cross_encoder import OnnxCrossEncoder

            short = f"onnx-int8, max_length {short_length}"
            scorers[short] = OnnxCrossEncoder(onnx_folder, max_length=short_length).score
            methods[short] = (f"the same INT8 graph reading {short_length} tokens per pair "
                              "(SHOPRANK_RERANKER_MAX_LENGTH): faster, but not equal quality")
    scorers["naive"] = naive.score
    for name, scorer in scorers.items():  # load, first-call allocations
        progress(f"rerank: warming up {name}")
        scorer(requests[0][0], requests[0][1][:8])
    results: dict[str, dict[str, dict[str, float]]] = {}
    differences: dict[str, float] = {}
    for candidates in candidate_sizes:
        progress(f"rerank: {len(requests)} requests x {candidates} candidates, "
                 f"{', '.join(scorers)} in turn")
        seconds, scores = measure(scorers, requests, candidates)
        rows = {name: summarize(values, candidates) for name, values in seconds.items()}
        for row in rows.values():
            row["pairs_per_s_vs_naive"] = ratio(row["pairs_per_s"], rows["naive"]["pairs_per_s"])
            row["p50_speedup"] = ratio(rows["naive"]["p50_ms"], row["p50_ms"])
            row["p95_speedup"] = ratio(rows["naive"]["p95_ms"], row["p95_ms"])
        results[str(candidates)] = rows
        if "onnx-int8" in scores:
            differences[str(candidates)] = max_difference(scores["onnx-int8"], scores["ours"])
    tokenizer = naive.model.tokenizer
    mean_tokens = {
        str(cap): statistics.fmean(
            len(ids) for query, texts in requests
            for ids in tokenizer([query] * len(texts), texts, truncation="longest_first",
                                 max_length=cap)["input_ids"])
        for cap in sorted({ours.max_length, naive.max_length, short_length or naive.max_length})
    }
    return {
        "requests": len(requests), "candidates": candidate_sizes,
        "source": "ESCI dev queries x their top 100 hybrid candidates from the ESCI index "
                  "(product_to_text); 50 candidates = the first 50",
        "mean_tokens_per_pair": mean_tokens,
        "methods": {
            **methods,
            "naive": f"CrossEncoder.predict, fp32, max_length {naive.max_length}, batches of 32",
        },
        "onnx_vs_ours_max_abs_score_difference": differences or None,
        "results": results,
    }


# --- HTTP ---------------------------------------------------------------------------------------

def http_servers(
    args: argparse.Namespace, checkpoint: Path, onnx_folder: Path | None
) -> tuple[list[tuple[str, list[str], int, dict[str, str]]], str]:
    """The two servers' names, command lines, ports and environments, and what ours reranks
    with."""
    from plugin.settings import RerankerKind

    reranker, folder = "cross-encoder", checkpoint
    note = f"cross-encoder (InProcessCrossEncoder) on {checkpoint}"
    if args.reranker == "onnx":
        if "onnx" not in get_args(RerankerKind):
            note += "; --reranker onnx asked, but `shoprank serve` has no onnx reranker yet"
        elif onnx_folder is None:
            note += "; --reranker onnx asked, but the ONNX export is not available"
        else:
            reranker, folder, note = "onnx", onnx_folder, f"onnx on {onnx_folder}"
    python, ours_port, naive_port = sys.executable, free_port(), free_port()
    # `python -m plugin` is `shoprank` (plugin/__main__.py), without relying on the installed
    # entry point
    ours = [python, "-m", "plugin", "serve", "--index", args.index, "--port", str(ours_port),
            "--reranker", reranker]
    if serves_packaged_default(args):
        # Out of the box: the packaged cross-encoder as `serve` loads it by default (its ONNX
        # export made once under the home's cache, before the servers start).
        note = (f"onnx on the packaged cross-encoder, as `shoprank serve` runs by default "
                f"(export {shipped_onnx_export(args.home)})")
    else:
        ours += ["--checkpoint", str(folder)]
    ours_env: dict[str, str] = {}
    if args.rerank_max_length is not None:
        ours_env["SHOPRANK_RERANKER_MAX_LENGTH"] = str(args.rerank_max_length)
        note += f", reading {args.rerank_max_length} tokens per pair (SHOPRANK_RERANKER_MAX_LENGTH)"
    naive = [python, "-m", "bench.naive_server", "--index", args.index,
             "--port", str(naive_port), "--checkpoint", str(checkpoint)]
    env = {**os.environ, "SHOPRANK_HOME": str(args.home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return [("ours", ours, ours_port, {**env, **ours_env}),
            ("naive", naive, naive_port, env)], note


def http_requests_for(sizes: Sizes, rerank: bool, concurrency: int) -> int:
    if rerank:
        return max(sizes.rerank_http_requests, concurrency)
    return max(sizes.http_requests, 2 * concurrency)


def bench_http(
    sizes: Sizes, args: argparse.Namespace, checkpoint: Path, onnx_folder: Path | None,
    scratch: Path,
) -> dict[str, Any]:
    from reranker.metrics import load_qrels, load_queries

    queries = list(load_queries(ESCI_QUERIES).values())
    commands, note = http_servers(args, checkpoint, onnx_folder)
    points: list[dict[str, Any]] = []
    with ExitStack() as stack:
        progress("http: starting both servers")
        servers = [
            stack.enter_context(running_server(
                name, argv, port=port, env=env, log=scratch / f"{name}.log", cwd=REPO))
            for name, argv, port, env in commands
        ]
        offset = 0
        number = 0
        for label, (mode, rerank) in HTTP_MODES.items():
            bodies = search_bodies(queries, mode=mode, rerank=rerank)
            for server in servers:  # the reranker loads on its first request
                asyncio.run(measure_point(server.url, bodies[-1:], concurrency=1, requests=1))
            levels = sizes.rerank_concurrency if rerank else sizes.concurrency
            for level in levels:
                count = http_requests_for(sizes, rerank, level)
                turn = servers if number % 2 == 0 else servers[::-1]  # who goes first alternates
                number += 1
                for server in turn:
                    progress(f"http: {label}, concurrency {level}, {count} requests, {server.name}")
                    point = asyncio.run(measure_point(
                        server.url, bodies, concurrency=level, requests=count, offset=offset))
                    points.append({"server": server.name, "mode": label, **point.row()})
                    if point.errors:
                        progress(f"http: {point.errors} error(s), first: {point.first_error}")
                offset += count
        about = {s.name: {"command": shlex.join(s.argv), "peak_rss_mb": s.peak_rss_mb(),
                          "metrics": server_metrics(s)} for s in servers}
        quality = http_quality(servers, load_queries(ESCI_QUERIES), load_qrels(ESCI_QRELS))
    return {
        "index": args.index, "home": str(args.home), "queries": f"{len(queries)} ESCI dev "
        "queries, cycled (both servers get the same queries at each point)",
        "reranker": note, "servers": about, "points": points, "quality": quality,
        "skipped": [f"hybrid+rerank at concurrency {c}" for c in sizes.concurrency
                    if c not in sizes.rerank_concurrency],
    }


def serves_packaged_default(args: argparse.Namespace) -> bool:
    """Whether ours serves the packaged cross-encoder as `shoprank serve` does by default (no
    ``--checkpoint``, the onnx reranker, and a packaged cross-encoder to serve)."""
    from plugin.components import PACKAGED_RERANKER
    from reranker.cross_encoder import read_model_card

    return (args.checkpoint is None and args.reranker == "onnx"
            and read_model_card(PACKAGED_RERANKER) is not None)


def shipped_onnx_export(home: Path) -> Path:
    """The packaged cross-encoder's ONNX export under ``home``'s cache, made now if missing
    (the folder `shoprank serve` would make on its first rerank)."""
    from indexer.settings import IndexerSettings
    from plugin.components import PACKAGED_RERANKER, onnx_reranker_folder

    return onnx_reranker_folder(PACKAGED_RERANKER, IndexerSettings(home=home).onnx_cache_dir)


def http_quality(
    servers: Sequence[Server], queries: Mapping[str, str], qrels: Qrels, depth: int = 100
) -> list[dict[str, Any]]:
    """nDCG@10 (plain and judged-only) of what each server answers to every judged query, with
    and without reranking (hybrid mode, the server's final stage): the quality at the settings
    the latency rows measure. One request at a time, ``depth`` results each (judged-only nDCG
    skips unjudged products, so it reads below the top 10)."""
    import httpx

    from reranker.metrics import ESCI_GAINS, evaluate_run

    rows: list[dict[str, Any]] = []
    for server in servers:
        for rerank in (False, True):
            progress(f"http: quality of {server.name}, hybrid, rerank {rerank}, "
                     f"{len(queries)} queries")
            run: dict[str, list[str]] = {}
            degraded, errors, final_stages, reranked = 0, 0, set(), 0
            with httpx.Client(base_url=server.url, timeout=QUALITY_TIMEOUT_S) as client:
                for qid, text in queries.items():
                    try:
                        response = client.post("/search", json={
                            "query": text, "k": depth, "mode": "hybrid", "rerank": rerank})
                        response.raise_for_status()
                    except httpx.HTTPError as e:  # scored as an empty answer, and counted
                        errors += 1
                        progress(f"http: quality request for {qid} failed: {e}")
                        continue
                    body = response.json()
                    run[qid] = [hit["id"] for hit in body["results"]]
                    degraded += bool(body["degraded"])
                    final_stages.add(body["final_stage"])
                    reranked = max(reranked, body["reranked"])
            found = evaluate_run(run, qrels, k=10, candidates_depth=depth, gains=ESCI_GAINS)
            rows.append({"server": server.name, "mode": "hybrid+rerank" if rerank else "hybrid",
                         "queries": found.queries, "ndcg": found.ndcg,
                         "ndcg_judged_only": found.ndcg_condensed, "judged": found.judged,
                         "degraded": degraded, "errors": errors, "reranked": reranked,
                         "final_stage": sorted(final_stages)})
    return rows


# --- the index, the checkpoint ------------------------------------------------------------------

def ensure_index(home: Path, index: str, reuse_only: bool) -> dict[str, Any]:
    """The ESCI index under ``home``: built with `shoprank reindex` when missing."""
    from indexer.encoder import BiEncoder
    from indexer.errors import IndexerError
    from indexer.local_store import LocalStore
    from indexer.settings import IndexerSettings
    from indexer.store import check_encoder

    store = LocalStore(IndexerSettings(home=home).indexes_dir / index)
    built = None
    if not store.exists():
        if reuse_only:
            raise SystemExit(f"no index {index!r} in {home}: leave out --home to build one")
        progress(f"building the ESCI index {index} in {home} (first run only, minutes)")
        argv = [sys.executable, "-m", "plugin", "reindex", "--catalog", str(ESCI_CATALOG),
                "--index", index]
        start = time.perf_counter()
        subprocess.run(argv, cwd=REPO, env={**os.environ, "SHOPRANK_HOME": str(home)}, check=True)
        built = time.perf_counter() - start
    try:
        check_encoder(store, BiEncoder())
    except IndexerError as e:
        raise SystemExit(f"the index cannot serve vector queries here: {e}") from e
    return {"home": str(home), "index": index, "products": store.count(),
            "built_seconds": built, "store": store}


def checkpoint_for(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """The cross-encoder both sides rank with: ``--checkpoint``, else the shipped one (its LoRA
    adapter merged into a full checkpoint, so the naive baseline loads the same weights)."""
    from plugin.components import PACKAGED_RERANKER
    from reranker.cross_encoder import read_model_card

    if args.checkpoint is not None:
        return args.checkpoint, str(args.checkpoint)
    card = read_model_card(PACKAGED_RERANKER)
    if card is None:
        return (default_checkpoint(scratch / "packaged-fresh-head"),
                "packaged all-MiniLM-L6-v2 weights + a fresh 1-logit head, full checkpoint "
                "(no shipped cross-encoder found; speed does not depend on the head)")
    return (merged_checkpoint(PACKAGED_RERANKER, scratch / "shipped-merged"),
            f"the shipped cross-encoder ({PACKAGED_RERANKER.relative_to(REPO)}, LoRA merged "
            f"into a full checkpoint for the in-process rows and the naive baseline), "
            f"{card.max_length} tokens per pair")


def merged_checkpoint(adapter: Path, folder: Path) -> Path:
    """``adapter`` (a LoRA artifact) merged and saved as a full checkpoint in ``folder``, with
    its model card (mode "full"), so it reads the same number of tokens per pair."""
    from reranker.cross_encoder import MODEL_CARD, InProcessCrossEncoder, read_model_card

    InProcessCrossEncoder(adapter).model.save(str(folder))
    card = read_model_card(adapter)
    if card is not None:
        (folder / MODEL_CARD).write_text(
            card.model_copy(update={"mode": "full"}).model_dump_json(indent=2) + "\n",
            encoding="utf-8")
    return folder


# --- the report ---------------------------------------------------------------------------------

def _f(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x"


def report(data: dict[str, Any]) -> str:
    m = data["machine"]
    v = m["versions"]
    lines = [
        f"# shoprank CPU benchmark suite{' (--quick)' if data['quick'] else ''}, {m['date'][:10]}",
        "",
        f"- command: `{m['command']}`, {data['seconds']:.0f} s in all",
        f"- machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; load "
        f"average {m['load_average_before']} before, {data['load_average_after']} after",
        f"- software: Python {m['python']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}, "
        f"sentence-transformers {v['sentence-transformers']}, transformers {v['transformers']}, "
        f"fastapi {v['fastapi']}, uvicorn {v['uvicorn']}, httpx {v['httpx']}",
        f"- git: {m['git_commit']} ({m['git_changed_files']} tracked files changed)",
        "- SHOPRANK_ settings in the environment: " + (", ".join(
            f"`{k}={v}`" for k, v in m.get("shoprank_environment", {}).items()) or "none"),
        f"- checkpoint: {data['checkpoint']}",
        "- ratios: throughput ours / naive; latency speed-up naive / ours (above 1: ours faster)",
        "",
        *summary(data),
    ]
    if "indexing" in data:
        idx = data["indexing"]
        lines += [
            "## Indexing (Icecat, embed + local store write)", "",
            "| method | products | mean tokens (encoded) | products/s | vs naive |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name in ("ours", "naive"):
            row = idx[name]
            lines.append(f"| {name}: {row['method']} | {row['products']} | "
                         f"{row['mean_tokens_untruncated']:.0f} "
                         f"({row['mean_tokens_encoded']:.0f}) | {_f(row['products_per_s'])} | "
                         f"{_x(idx['ratio'] if name == 'ours' else 1.0)} |")
        lines += ["", "The naive sample takes evenly spaced quantiles of ours' token counts, so "
                  "both see the same length mix; mean tokens before truncation, and (in "
                  "brackets) as encoded.", ""]
    if "query" in data:
        q = data["query"]
        lines += [
            f"## Query encoding ({q['queries']} real ESCI + Icecat queries, one at a time)", "",
            "| method | p50 ms | p95 ms | p50 speed-up | p95 speed-up |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| ours, first time seen (cache miss) | {_f(q['ours_cold']['p50_ms'], 2)} | "
            f"{_f(q['ours_cold']['p95_ms'], 2)} | {_x(q['ours_cold']['p50_speedup'])} | "
            f"{_x(q['ours_cold']['p95_speedup'])} |",
            f"| ours, seen before (cache hit) | {_f(q['ours_cached']['p50_ms'], 3)} | "
            f"{_f(q['ours_cached']['p95_ms'], 3)} | {_x(q['ours_cached']['p50_speedup'])} | "
            f"{_x(q['ours_cached']['p95_speedup'])} |",
            f"| naive: SentenceTransformer.encode([q]) per call | {_f(q['naive']['p50_ms'], 2)} | "
            f"{_f(q['naive']['p95_ms'], 2)} | 1.00x | 1.00x |",
            "",
            f"Cache hit rate on a repeated stream: {q['stream']['hit_rate']:.1%} "
            f"({q['stream']['length']} queries, {q['stream']['distinct']} distinct; "
            f"{q['stream']['definition']}; LRU of {q['stream']['cache_size']}).",
            "",
        ]
    if "rerank" in data:
        r = data["rerank"]
        tokens = ", ".join(f"{t:.0f} at max_length {cap}"
                           for cap, t in r["mean_tokens_per_pair"].items())
        lines += [
            f"## Reranking ({r['requests']} requests per size, concurrency 1)", "",
            f"{r['source']}; mean tokens per pair {tokens}.", "",
            "| candidates | method | p50 ms | p95 ms | pairs/s | pairs/s vs naive | "
            "p50 speed-up | p95 speed-up |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for candidates, rows in r["results"].items():
            for name, row in rows.items():
                lines.append(
                    f"| {candidates} | {name} | {_f(row['p50_ms'], 0)} | {_f(row['p95_ms'], 0)} "
                    f"| {_f(row['pairs_per_s'])} | {_x(row['pairs_per_s_vs_naive'])} | "
                    f"{_x(row['p50_speedup'])} | {_x(row['p95_speedup'])} |")
        lines += [""] + [f"- {name}: {text}" for name, text in r["methods"].items()]
        if r["onnx_vs_ours_max_abs_score_difference"]:
            lines.append(f"- ONNX INT8 vs ours, max abs score difference: "
                         f"{r['onnx_vs_ours_max_abs_score_difference']}")
        if r["requests"] < 20:
            lines.append(f"- with {r['requests']} requests per row, p95 (nearest rank) is the "
                         "slowest request")
        lines.append("")
    if "http" in data:
        lines += http_report(data["http"])
    lines += ["## Notes", "", *(f"- {note}" for note in data["notes"])]
    return "\n".join(lines) + "\n"


def summary(data: dict[str, Any]) -> list[str]:
    """One line per headline figure; the sections below hold the rest."""
    rows: list[tuple[str, str, str, str]] = []
    if "indexing" in data:
        i = data["indexing"]
        rows.append(("indexing, products/s", _f(i["ours"]["products_per_s"]),
                     _f(i["naive"]["products_per_s"]), _x(i["ratio"])))
    if "query" in data:
        q = data["query"]
        for name, label in (("ours_cold", "cache miss"), ("ours_cached", "cache hit")):
            rows.append((f"query encoding p50 ms, {label}", _f(q[name]["p50_ms"], 3),
                         _f(q["naive"]["p50_ms"], 2), _x(q[name]["p50_speedup"])))
        rows.append(("query cache hit rate, repeated stream",
                     f"{q['stream']['hit_rate']:.1%}", "no cache", "-"))
    if "rerank" in data:
        for candidates, methods in data["rerank"]["results"].items():
            for name, row in methods.items():
                if name != "naive":
                    rows.append((f"rerank {candidates} candidates, pairs/s ({name})",
                                 _f(row["pairs_per_s"]), _f(methods["naive"]["pairs_per_s"]),
                                 _x(row["pairs_per_s_vs_naive"])))
    if "http" in data:
        points = {(p["mode"], p["concurrency"], p["server"]): p for p in data["http"]["points"]}
        for mode in HTTP_MODES:
            levels = sorted({c for m, c, _ in points if m == mode})
            for level in (levels[:1] + levels[-1:]) if levels else []:
                ours, naive = points[(mode, level, "ours")], points[(mode, level, "naive")]
                rows.append((f"HTTP {mode}, concurrency {level}, p95 ms", _f(ours["p95_ms"]),
                             _f(naive["p95_ms"]), _x(ratio(naive["p95_ms"], ours["p95_ms"]))))
        quality = {(q["server"], q["mode"]): q for q in data["http"].get("quality", [])}
        for mode in ("hybrid", "hybrid+rerank"):
            if ("ours", mode) in quality and ("naive", mode) in quality:
                ours, naive = quality[("ours", mode)], quality[("naive", mode)]
                rows.append((f"HTTP {mode}, nDCG@10 / judged-only (in-sample)",
                             f"{ours['ndcg']:.3f} / {ours['ndcg_judged_only']:.3f}",
                             f"{naive['ndcg']:.3f} / {naive['ndcg_judged_only']:.3f}", "-"))
    if not rows:
        return []
    return ["## Summary", "", "| figure | ours | naive | ours vs naive |",
            "| --- | ---: | ---: | ---: |", *(f"| {' | '.join(row)} |" for row in rows), ""]


def http_report(h: dict[str, Any]) -> list[str]:
    lines = [
        f"## HTTP end to end (`POST /search`, k=10, index {h['index']})", "",
        f"Queries: {h['queries']}. Ours reranks with {h['reranker']}. Both servers run the "
        "learned final stage on hybrid requests (the server default). Client latency, "
        "connection included; the load generator runs on the same cores as the server. bm25 "
        "calls no model, so its rows are the control: their ratios show the noise between the "
        "two servers. Requests in flight share the CPU, so at concurrency C a rerank request "
        "takes about C times as long.", "",
        "| mode | conc. | requests | ours p50 / p95 / p99 ms | naive p50 / p95 / p99 ms | "
        "p50 speed-up | p95 speed-up | p99 speed-up | req/s ours / naive | errors ours / naive | "
        "ours cache hits |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_key = {(p["mode"], p["concurrency"], p["server"]): p for p in h["points"]}
    for (mode, level, server), ours in by_key.items():
        if server != "ours":
            continue
        naive = by_key[(mode, level, "naive")]
        lines.append(
            f"| {mode} | {level} | {ours['requests']} | {_f(ours['p50_ms'])} / "
            f"{_f(ours['p95_ms'])} / {_f(ours['p99_ms'])} | {_f(naive['p50_ms'])} / "
            f"{_f(naive['p95_ms'])} / {_f(naive['p99_ms'])} | "
            f"{_x(ratio(naive['p50_ms'], ours['p50_ms']))} | "
            f"{_x(ratio(naive['p95_ms'], ours['p95_ms']))} | "
            f"{_x(ratio(naive['p99_ms'], ours['p99_ms']))} | {_f(ours['requests_per_s'], 2)} / "
            f"{_f(naive['requests_per_s'], 2)} | {ours['errors']} / {naive['errors']} | "
            f"{'-' if mode == 'bm25' else format(ours['encode_cache_hits'] or 0, '.0%')} |")
    errors = [p for p in h["points"] if p["errors"] or p["degraded"]]
    lines.append("")
    for p in errors:
        lines.append(f"- {p['server']} {p['mode']} c={p['concurrency']}: {p['errors']} errors "
                     f"{p['status_counts']}, {p['degraded']} degraded; first: {p['first_error']}")
    if not errors:
        lines.append("- no error responses and no degraded answers at any point")
    lines.append("- ours cache hits: the share of ours' answers whose encode stage took under "
                 "1 ms, i.e. came from its query-embedding cache (queries repeat as the cycle "
                 "comes round); the naive server encodes every query")
    for name, about in h["servers"].items():
        lines.append(f"- {name}: `{about['command']}`, peak RSS {_f(about['peak_rss_mb'], 0)} MB")
    for skipped in h["skipped"]:
        lines.append(f"- not measured in this mode: {skipped}")
    if h.get("quality"):
        lines += [
            "", "### Quality at these settings", "",
            "Each server's answers to every judged ESCI dev query, one at a time, 100 results "
            "each (hybrid mode, the server's final stage), scored with ESCI gains. The packaged "
            "final stages were fitted on these dev queries, so the figures are in-sample: the "
            "cross-validated ones are in the README (\"The semantic reranker\"). The naive server "
            "reranks with the same weights at full length, and its final stage reads those "
            "scores.", "",
            "| server | mode | queries | nDCG@10 | judged-only | judged@10 | reranked | "
            "final stage | degraded | errors (scored 0) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for row in h["quality"]:
            lines.append(
                f"| {row['server']} | {row['mode']} | {row['queries']} | {row['ndcg']:.4f} | "
                f"{row['ndcg_judged_only']:.4f} | {row['judged']:.3f} | {row['reranked']} | "
                f"{', '.join(row['final_stage'])} | {row['degraded']} | {row['errors']} |")
    return [*lines, ""]


def _tokens(text: str) -> int:
    value = int(text)
    if not 16 <= value <= 512:
        raise argparse.ArgumentTypeError(f"--rerank-max-length must be 16-512 (got {value})")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller samples (~5 minutes)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--checkpoint", type=Path, help="cross-encoder checkpoint (full)")
    parser.add_argument("--reranker", choices=["cross-encoder", "onnx"], default="onnx",
                        help="what ours serves over HTTP (onnx: the server's default)")
    parser.add_argument("--home", type=Path,
                        help="reuse this SHOPRANK_HOME's --index instead of the suite's own")
    parser.add_argument("--index", default=DEFAULT_INDEX)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerank-max-length", type=_tokens, metavar="TOKENS",
                        default=os.environ.get("SHOPRANK_RERANKER_MAX_LENGTH"),
                        help="ours' server reads this many tokens per pair, and the rerank "
                             "section adds an INT8 row at it (faster; not equal quality); "
                             "default: SHOPRANK_RERANKER_MAX_LENGTH")
    parser.add_argument("--rerank-http-requests", type=int, metavar="N",
                        help="requests per hybrid+rerank point (default 4, quick 2)")
    args = parser.parse_args()
    reuse_only = args.home is not None
    args.home = (args.home or DEFAULT_HOME).resolve()
    sizes = QUICK if args.quick else FULL
    if args.rerank_http_requests is not None:
        sizes = replace(sizes, rerank_http_requests=args.rerank_http_requests)
    command = shlex.join(["python3", "-m", "bench.suite", *sys.argv[1:]])
    data: dict[str, Any] = {"machine": describe_machine(command), "quick": args.quick,
                            "sizes": asdict(sizes), "sections": args.sections}
    progress(f"{command}: sections {', '.join(args.sections)}")
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as folder:
        scratch = Path(folder)
        checkpoint, data["checkpoint"] = checkpoint_for(args, scratch)
        index = None
        if {"rerank", "http"} & set(args.sections):
            index = ensure_index(args.home, args.index, reuse_only)
            data["index"] = {k: v for k, v in index.items() if k != "store"}
        if "indexing" in args.sections:
            data["indexing"] = bench_indexing(sizes, scratch)
            gc.collect()
        if "query" in args.sections:
            data["query"] = bench_query_encoding(sizes, args.seed)
            gc.collect()
        onnx_folder = None
        if "rerank" in args.sections and index is not None:
            data["rerank"] = bench_rerank(sizes, checkpoint, index["store"], scratch, args.seed,
                                          args.rerank_max_length)
            if args.reranker == "onnx" and "onnx-int8" in data["rerank"]["results"]["50"]:
                onnx_folder = scratch / "onnx-int8"
            gc.collect()
        if "http" in args.sections:
            exports = args.reranker == "onnx" and not serves_packaged_default(args)
            if exports and onnx_folder is None:
                _, onnx_folder, _ = onnx_reranker(checkpoint, scratch)
            data["http"] = bench_http(sizes, args, checkpoint, onnx_folder, scratch)
    data["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    data["suite_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    data["seconds"] = time.perf_counter() - _STARTED
    data["notes"] = notes(data, sizes)
    text = report(data)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = data["machine"]["date"][:19].replace(":", "")
    name = f"suite-{stamp}{'-quick' if args.quick else ''}"
    (args.out_dir / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (args.out_dir / f"{name}.md").write_text(text)
    print(text)
    progress(f"wrote {args.out_dir / name}.md and .json")


def notes(data: dict[str, Any], sizes: Sizes) -> list[str]:
    found = [
        f"samples: indexing the first {sizes.index_products} Icecat products ours, "
        f"{sizes.naive_index_products} of them naive (same length mix); query encoding "
        f"{sizes.queries or 'all'} queries; reranking {sizes.rerank_requests} requests per size; "
        f"HTTP {sizes.http_requests} requests per point (at least 2 x concurrency), "
        f"{sizes.rerank_http_requests} with rerank (at least the concurrency)",
        "in-process figures are single runs on a machine other jobs may share: compare rows "
        "within this run, not with other runs",
        "the HTTP load generator (one asyncio process) shares the machine's cores with the "
        "server it loads; both servers stay up during the HTTP section and take turns, so a "
        "change in background load hits both",
        f"the suite's own peak RSS: {data['suite_peak_rss_mb']:.0f} MB",
    ]
    if "index" in data:
        i = data["index"]
        built = f", built now in {i['built_seconds']:.0f} s" if i["built_seconds"] else ""
        found.append(f"ESCI index {i['index']} in {i['home']}: {i['products']} products{built}")
    return found


if __name__ == "__main__":
    main()
