"""Which HNSW library the embedded store's vector index should use: faiss, usearch and hnswlib
measured on the same vectors.

    python3 -m pip install usearch==2.26.6 hnswlib==0.8.0  # not shoprank's dependencies
    python3 -m bench.ann_libraries --sizes 100000,1000000 --out bench/ann-libraries-2026-12-07.md

Vectors: the real product vectors of the local indexes eval-esci-us and eval-icecat (384-d,
L2-normalised), repeated with seeded Gaussian noise and re-normalised up to N rows; the queries are
200 more perturbed copies, kept out of the base. Ground truth: exact inner-product top-100 with
numpy, over all rows and over random allow-sets of 10% and 1% of the rows (what a brand, category,
price or stock filter leaves). Each candidate is built with 2 threads, searched one query at a
time on one thread (exact numpy search on one thread is the baseline, in the same run), grown by
1,000 single adds, and opened again in a fresh subprocess that reports its open time and resident
memory (/proc/self/status). The Markdown is rewritten after each size, so a cut-off run keeps
what it finished.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from bench.machine import cpu_model, percentile

INDEXES = Path.home() / ".local" / "share" / "shoprank" / "indexes"
SOURCES = ("eval-esci-us", "eval-icecat")
K = 100
QUERIES = 200
ADDS = 1_000
EF_CONSTRUCTION = 64
EF_SEARCH = (128, 256, 512)
FRACTIONS = (0.10, 0.01)
OVERSAMPLE = 2.0  # usearch post-filter: ask for OVERSAMPLE * k / fraction neighbours
TARGET_RECALL = 0.95
Vectors = np.ndarray[Any, np.dtype[np.float32]]
Ids = np.ndarray[Any, np.dtype[np.int64]]


@dataclass
class Allowed:
    """A random allow-set in every form a library wants it."""

    fraction: float
    mask: np.ndarray[Any, np.dtype[np.bool_]]
    ids: Ids
    bits: np.ndarray[Any, np.dtype[np.uint8]]
    members: frozenset[int]
    truth: Ids  # exact top-k over the allowed rows, one row per query


def library(name: str) -> Any:
    """Import faiss, usearch.index or hnswlib untyped: hnswlib ships no types, faiss's stubs lack
    SearchParametersHNSW, and usearch's make expansion_search read-only (it is settable)."""
    return importlib.import_module(name)


class Candidate(Protocol):
    """One library and its parameters; `index` is the built index, `opens` the ways to reopen it."""

    name: str
    deletion: str
    opens: tuple[str, ...]
    scales_filtered_ef: bool
    index: Any

    def build(self, base: Vectors, threads: int) -> None: ...
    def save(self, path: Path) -> None: ...
    def search(self, query: Vectors, ef: int) -> Ids: ...
    def filtered(self, query: Vectors, ef: int, allowed: Allowed) -> Ids: ...
    def add(self, key: int, vector: Vectors) -> None: ...


class FaissHNSW:
    """faiss IndexHNSWFlat, or IndexHNSWSQ with `quantizer` QT_8bit / QT_fp16."""

    deletion = "no (HNSW has no remove_ids; hide rows with an IDSelector)"
    opens: tuple[str, ...] = ("faiss read_index", "faiss IO_FLAG_MMAP_IFC")
    scales_filtered_ef = True

    def __init__(self, m: int, quantizer: str | None) -> None:
        self.m, self.quantizer = m, quantizer
        self.name = f"faiss HNSW{'SQ ' + quantizer if quantizer else 'Flat'} M={m}"

    def build(self, base: Vectors, threads: int) -> None:
        faiss = library("faiss")

        faiss.omp_set_num_threads(threads)
        ip = faiss.METRIC_INNER_PRODUCT
        if self.quantizer is None:
            self.index = faiss.IndexHNSWFlat(base.shape[1], self.m, ip)
        else:
            kind = getattr(faiss.ScalarQuantizer, self.quantizer)
            self.index = faiss.IndexHNSWSQ(base.shape[1], kind, self.m, ip)
            self.index.train(base[:100_000])
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.index.add(base)
        faiss.omp_set_num_threads(1)

    def save(self, path: Path) -> None:
        faiss = library("faiss")

        faiss.write_index(self.index, str(path))

    def search(self, query: Vectors, ef: int) -> Ids:
        faiss = library("faiss")

        params = faiss.SearchParametersHNSW(efSearch=ef)
        return np.asarray(self.index.search(query[None], K, params=params)[1][0])

    def filtered(self, query: Vectors, ef: int, allowed: Allowed) -> Ids:
        faiss = library("faiss")

        selector = faiss.IDSelectorBitmap(len(allowed.mask), faiss.swig_ptr(allowed.bits))
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        ids = np.asarray(self.index.search(query[None], K, params=params)[1][0])
        return ids[ids >= 0]

    def add(self, key: int, vector: Vectors) -> None:
        self.index.add(vector[None])


class USearchHNSW:
    """usearch Index; no filter callback in Python, so filtered search oversamples and drops."""

    deletion = "yes (remove(key))"
    opens: tuple[str, ...] = ("usearch restore", "usearch restore view=True")
    scales_filtered_ef = False

    def __init__(self, dtype: str, connectivity: int) -> None:
        self.dtype, self.connectivity = dtype, connectivity
        self.name = f"usearch {dtype} conn={connectivity}"

    def build(self, base: Vectors, threads: int) -> None:
        Index = library("usearch.index").Index

        self.index = Index(ndim=base.shape[1], metric="ip", dtype=self.dtype,
                           connectivity=self.connectivity, expansion_add=EF_CONSTRUCTION)
        self.index.add(np.arange(len(base)), base, threads=threads)

    def save(self, path: Path) -> None:
        self.index.save(str(path))

    def search(self, query: Vectors, ef: int) -> Ids:
        self.index.expansion_search = ef
        return np.asarray(self.index.search(query, K, threads=1).keys, dtype=np.int64)

    def filtered(self, query: Vectors, ef: int, allowed: Allowed) -> Ids:
        count = min(len(allowed.mask), math.ceil(OVERSAMPLE * K / allowed.fraction))
        self.index.expansion_search = max(ef, count)
        keys = np.asarray(self.index.search(query, count, threads=1).keys, dtype=np.int64)
        return keys[allowed.mask[keys]][:K]

    def add(self, key: int, vector: Vectors) -> None:
        self.index.add(key, vector, threads=1)


class HnswlibHNSW:
    """hnswlib Index (space ip); filtered search calls a Python predicate per visited node."""

    deletion = "yes (mark_deleted(label))"
    opens: tuple[str, ...] = ("hnswlib load_index",)
    scales_filtered_ef = False

    def __init__(self, m: int) -> None:
        self.m = m
        self.name = f"hnswlib M={m}"

    def build(self, base: Vectors, threads: int) -> None:
        hnswlib = library("hnswlib")

        self.index = hnswlib.Index(space="ip", dim=base.shape[1])
        self.index.init_index(max_elements=len(base) + ADDS, ef_construction=EF_CONSTRUCTION,
                              M=self.m, random_seed=0)
        self.index.set_num_threads(threads)
        self.index.add_items(base, np.arange(len(base)))

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))

    def search(self, query: Vectors, ef: int) -> Ids:
        self.index.set_ef(ef)
        return np.asarray(self.index.knn_query(query, K, num_threads=1)[0][0], dtype=np.int64)

    def filtered(self, query: Vectors, ef: int, allowed: Allowed) -> Ids:
        self.index.set_ef(ef)
        try:
            labels = self.index.knn_query(query, K, num_threads=1,
                                          filter=allowed.members.__contains__)[0][0]
        except RuntimeError:  # fewer than k found: hnswlib returns nothing at all
            return np.empty(0, dtype=np.int64)
        return np.asarray(labels, dtype=np.int64)

    def add(self, key: int, vector: Vectors) -> None:
        self.index.add_items(vector[None], [key], num_threads=1)


def candidates() -> list[Candidate]:
    return [FaissHNSW(32, None), FaissHNSW(16, None), FaissHNSW(32, "QT_8bit"),
            FaissHNSW(32, "QT_fp16"), USearchHNSW("f32", 32), USearchHNSW("f16", 32),
            USearchHNSW("i8", 32), USearchHNSW("f16", 16), HnswlibHNSW(32)]


def open_index(how: str, path: str, dim: int) -> Callable[[Vectors, int], object]:
    """Open a saved index the way `how` names; return a search function (query, ef)."""
    if how.startswith("faiss"):
        faiss = library("faiss")

        flag = faiss.IO_FLAG_MMAP_IFC if "MMAP" in how else 0
        index = faiss.read_index(path, flag)
        return lambda q, ef: index.search(q[None], K,
                                          params=faiss.SearchParametersHNSW(efSearch=ef))
    if how.startswith("usearch"):
        Index = library("usearch.index").Index

        opened = Index.restore(path, view="view" in how)
        assert opened is not None, path

        def usearch_search(q: Vectors, ef: int) -> object:
            opened.expansion_search = ef
            return opened.search(q, K, threads=1)
        return usearch_search
    hnswlib = library("hnswlib")

    loaded = hnswlib.Index(space="ip", dim=dim)
    loaded.load_index(path)
    loaded.set_num_threads(1)

    def hnswlib_search(q: Vectors, ef: int) -> object:
        loaded.set_ef(ef)
        return loaded.knn_query(q, K, num_threads=1)
    return hnswlib_search


def memory() -> dict[str, int]:
    """Resident kB of this process: total, anonymous (copied) and file-backed (mapped)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


def probe(how: str, path: str, queries_path: str, ef: int) -> None:
    """Subprocess entry: open the index, run the queries, print open time and memory as JSON."""
    queries = np.load(queries_path)
    library(how.split()[0].replace("usearch", "usearch.index"))  # before the first reading
    before = memory()
    started = time.perf_counter()
    search = open_index(how, path, queries.shape[1])
    open_s = time.perf_counter() - started
    opened = memory()
    for query in queries:
        search(query, ef)
    print(json.dumps({"open_s": open_s, "before": before, "opened": opened, "queried": memory()}))


@dataclass
class Result:
    """One candidate at one size."""

    name: str
    load: float
    build_s: float = 0.0
    file_mb: float = 0.0
    curve: list[tuple[int, float, float, float]] = field(default_factory=list)  # ef, rec, p50, p95
    ef: int = 0
    filtered: list[tuple[float, int, float, float, int, float, float]] = field(default_factory=list)
    add_ms: tuple[float, float] = (0.0, 0.0)
    deletion: str = ""
    opens: list[tuple[str, float, float, float, float, float]] = field(default_factory=list)


def perturb(sources: Vectors, sigma: float, rng: np.random.Generator) -> Vectors:
    noisy = sources + rng.standard_normal(sources.shape, dtype=np.float32) * np.float32(sigma)
    return np.asarray(noisy / np.linalg.norm(noisy, axis=1, keepdims=True), dtype=np.float32)


def real_vectors() -> Vectors:
    parts = [np.load(INDEXES / name / (INDEXES / name / "CURRENT").read_text().strip()
                     / "vectors.npy") for name in SOURCES]
    real = np.concatenate(parts).astype(np.float32)
    return np.asarray(real / np.linalg.norm(real, axis=1, keepdims=True), dtype=np.float32)


def make_base(real: Vectors, n: int, sigma: float, seed: int) -> Vectors:
    rng = np.random.default_rng(seed)
    base = np.empty((n, real.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        base[start:stop] = perturb(real[np.arange(start, stop) % len(real)], sigma, rng)
    return base


def exact_top(base: Vectors, queries: Vectors, rows: Ids | None = None) -> Ids:
    """Exact inner-product top-k of each query over `rows` of `base` (all rows if None)."""
    best_ids, best_scores = [], []
    total = len(base) if rows is None else len(rows)
    for start in range(0, total, 100_000):
        chunk = np.arange(start, min(total, start + 100_000)) if rows is None \
            else rows[start:start + 100_000]
        scores = queries @ base[chunk].T
        top = np.argpartition(-scores, min(K, scores.shape[1] - 1), axis=1)[:, :K]
        best_ids.append(chunk[top])
        best_scores.append(np.take_along_axis(scores, top, axis=1))
    ids, scores = np.concatenate(best_ids, axis=1), np.concatenate(best_scores, axis=1)
    order = np.argsort(-scores, axis=1)[:, :K]
    return np.asarray(np.take_along_axis(ids, order, axis=1), dtype=np.int64)


def recall(found: Ids, truth: Ids) -> float:
    return len(set(found.tolist()) & set(truth.tolist())) / max(1, min(K, len(truth)))


def timed(run: Callable[[Vectors], Ids], queries: Vectors) -> tuple[list[Ids], float, float]:
    found, times = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(run(query))
        times.append((time.perf_counter() - started) * 1000)
    return found, percentile(times, 50), percentile(times, 95)


def make_allowed(n: int, fraction: float, base: Vectors, queries: Vectors, seed: int) -> Allowed:
    mask = np.random.default_rng(seed).random(n) < fraction
    ids = np.flatnonzero(mask).astype(np.int64)
    return Allowed(fraction, mask, ids, np.packbits(mask, bitorder="little"),
                   frozenset(ids.tolist()), exact_top(base, queries, ids))


def measure(cand: Candidate, base: Vectors, queries: Vectors,
            truth: Ids, allowed: list[Allowed], extra: Vectors, scratch: Path) -> Result:
    result = Result(cand.name, os.getloadavg()[0], deletion=cand.deletion)
    print(f"{cand.name}: build (load {result.load:.2f})", file=sys.stderr, flush=True)
    started = time.perf_counter()
    cand.build(base, threads=2)
    result.build_s = time.perf_counter() - started
    path = scratch / "index.bin"
    cand.save(path)
    result.file_mb = path.stat().st_size / 1e6
    for ef in EF_SEARCH:
        found, p50, p95 = timed(partial(cand.search, ef=ef), queries)
        rec = float(np.mean([recall(f, t) for f, t in zip(found, truth, strict=True)]))
        result.curve.append((ef, rec, p50, p95))
    result.ef = next((ef for ef, rec, *_ in result.curve if rec >= TARGET_RECALL), EF_SEARCH[-1])
    for allow in allowed:
        scaled = min(len(base), math.ceil(result.ef / allow.fraction))
        for ef in (result.ef, scaled) if cand.scales_filtered_ef else (result.ef,):
            found, p50, p95 = timed(partial(cand.filtered, ef=ef, allowed=allow), queries)
            rec = float(np.mean([recall(f, t) for f, t in zip(found, allow.truth, strict=True)]))
            counts = [len(f) for f in found]
            result.filtered.append((allow.fraction, ef, rec, float(np.mean(counts)), min(counts),
                                    p50, p95))
    adds = []
    for offset, vector in enumerate(extra):
        started = time.perf_counter()
        cand.add(len(base) + offset, vector)
        adds.append((time.perf_counter() - started) * 1000)
    result.add_ms = (float(np.mean(adds)), percentile(adds, 95))
    del cand.index
    gc.collect()
    queries_path = scratch / "queries.npy"
    np.save(queries_path, queries)
    for how in cand.opens:
        argv = [sys.executable, "-m", "bench.ann_libraries", "--probe", how, str(path),
                str(queries_path), str(result.ef)]
        out = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
        grow = {key: (out["opened"][key] - out["before"][key]) / 1024
                for key in ("RssAnon", "RssFile")}
        after = (out["queried"]["VmRSS"] - out["before"]["VmRSS"]) / 1024
        result.opens.append((how, out["open_s"], grow["RssAnon"], grow["RssFile"], after,
                             out["queried"]["VmRSS"] / 1024))
    path.unlink()
    return result


def baseline(base: Vectors, queries: Vectors,
             allowed: list[Allowed]) -> list[tuple[str, float, float]]:
    """Exact numpy search, one query at a time on one thread: all rows, then each allow-set
    (gathering the allowed rows per query, as a store with a per-request filter would)."""
    def scan(query: Vectors, rows: Ids | None = None) -> Ids:
        scores = base @ query if rows is None else base[rows] @ query
        top = np.argpartition(-scores, K)[:K]
        return top if rows is None else rows[top]

    _, p50, p95 = timed(scan, queries)
    rows = [("exact numpy, all rows", p50, p95)]
    for allow in allowed:
        _, p50, p95 = timed(partial(scan, rows=allow.ids), queries)
        rows.append((f"exact numpy over the {allow.fraction:.0%} allowed rows", p50, p95))
    return rows


def size_section(n: int, results: list[Result], exact: list[tuple[str, float, float]],
                 load: float) -> list[str]:
    lines = [f"## {n:,} vectors\n", f"Load average (1 min) before ground truth: {load:.2f}.\n",
             "### Build, disk, open\n",
             "Build with 2 threads. Open in a fresh subprocess right after the save (warm page "
             "cache); RSS growth = after open minus after importing the library, in MB: "
             "anonymous (copied) / file-backed (mapped); 'after queries' is VmRSS growth after "
             f"the {QUERIES} queries, then the process's whole VmRSS.\n",
             "| candidate | load avg | build s | file MB | open | open s | RSS anon / file MB "
             "| after queries MB | VmRSS MB |", "| --- | ---: | ---: | ---: | --- | ---: | ---: "
             "| ---: | ---: |"]
    for r in results:
        for how, open_s, anon, mapped, after, total in r.opens:
            lines.append(f"| {r.name} | {r.load:.2f} | {r.build_s:.1f} | {r.file_mb:,.0f} | "
                         f"{how} | {open_s:.2f} | {anon:,.0f} / {mapped:,.0f} | {after:,.0f} | "
                         f"{total:,.0f} |")
    lines += ["", f"### Search, k={K}, one query at a time, one thread\n",
              "| candidate | efSearch | recall@100 | p50 ms | p95 ms |", "| --- | ---: | ---: "
              "| ---: | ---: |",
              f"| {exact[0][0]} | | 1.000 | {exact[0][1]:.2f} | {exact[0][2]:.2f} |"]
    for r in results:
        lines += [f"| {r.name} | {ef} | {rec:.3f} | {p50:.2f} | {p95:.2f} |"
                  for ef, rec, p50, p95 in r.curve]
    lines += ["", "### Filtered search, k=100\n",
              f"At the first efSearch above that reaches recall {TARGET_RECALL} (else the "
              "largest); faiss also at that efSearch / fraction, since its HNSW stops "
              "exploring as if unfiltered and returns fewer than k. "
              "faiss: IDSelectorBitmap in SearchParametersHNSW; hnswlib: `filter=` "
              "predicate (a frozenset's `__contains__`); usearch: no filter in Python, so it "
              f"asks for {OVERSAMPLE:g} x k / fraction neighbours and drops the disallowed. "
              "Recall against the exact top-100 over the allowed rows.\n",
              "| candidate | allowed | efSearch | recall@100 | returned mean / min | p50 ms "
              "| p95 ms |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {label} | | | 1.000 | {K} / {K} | {p50:.2f} | {p95:.2f} |"
              for label, p50, p95 in exact[1:]]
    for r in results:
        lines += [f"| {r.name} | {frac:.0%} | {ef} | {rec:.3f} | {mean:.1f} / {least} | "
                  f"{p50:.2f} | {p95:.2f} |" for frac, ef, rec, mean, least, p50, p95 in r.filtered]
    lines += ["", f"### Updates: {ADDS:,} single adds to the built index, one thread\n",
              "| candidate | add mean ms | add p95 ms | delete |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {r.name} | {r.add_ms[0]:.2f} | {r.add_ms[1]:.2f} | {r.deletion} |"
              for r in results]
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--out", type=Path, help="the Markdown file to write")
    parser.add_argument("--sigma", type=float, default=0.02, help="noise per dimension")
    parser.add_argument("--only", default="", help="per size, comma list of candidate names "
                        "to keep, e.g. '1000000=faiss HNSWFlat M=32;usearch f16 conn=32'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true", help="add to --out's sections")
    parser.add_argument("--probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe[0], args.probe[1], args.probe[2], int(args.probe[3]))
        return
    if args.out is None:
        parser.error("--out is required")
    keep = {int(size): set(names.split(";")) for size, _, names in
            (part.partition("=") for part in args.only.split(",") if part)}
    real = real_vectors()
    copies = make_base(real, len(real), args.sigma, args.seed + 1)
    cosine = float(np.mean(np.sum(copies * real, axis=1)))
    rng = np.random.default_rng(args.seed + 2)
    queries = perturb(real[rng.choice(len(real), QUERIES, replace=False)], args.sigma, rng)
    extra = perturb(real[rng.choice(len(real), ADDS)], args.sigma, rng)
    sections = [f"# HNSW libraries for the embedded store, {time.strftime('%Y-%m-%d')}\n",
                f"Command: `python3 -m {shlex.join(['bench.ann_libraries', *sys.argv[1:]])}`\n",
                f"Machine: {cpu_model()}, {os.cpu_count()} cores, shared with other work; CPU "
                f"only. {len(real):,} real vectors ({' + '.join(SOURCES)}), repeated with "
                f"Gaussian noise sigma {args.sigma} per dimension (mean cosine of a copy to its "
                f"source {cosine:.3f}), seed {args.seed}. {QUERIES} held-out perturbed queries. "
                f"efConstruction / expansion_add {EF_CONSTRUCTION}.\n"]
    if args.append:
        sections = [args.out.read_text(), *sections[1:]]
    for n in (int(size) for size in args.sizes.split(",")):
        load = os.getloadavg()[0]
        base = make_base(real, n, args.sigma, args.seed + 1)
        with threadpool_limits(1):
            truth = exact_top(base, queries)
            allowed = [make_allowed(n, frac, base, queries, args.seed + 3) for frac in FRACTIONS]
            exact = baseline(base, queries, allowed)
            results = []
            with tempfile.TemporaryDirectory(prefix="bench-ann-") as folder:
                for cand in candidates():
                    if n not in keep or cand.name in keep[n]:
                        results.append(measure(cand, base, queries, truth, allowed, extra,
                                               Path(folder)))
                        gc.collect()
        sections += size_section(n, results, exact, load)
        args.out.write_text("\n".join(sections))
        del base, truth, allowed
        gc.collect()


if __name__ == "__main__":
    main()
