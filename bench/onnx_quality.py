"""ONNX Runtime on CPU: is it faster, and does INT8 keep the quality? (issue 8)

    SHOPRANK_HOME=/tmp/srhome python3 -m bench.onnx_quality --checkpoint DIR
        [--requests 8] [--candidates 50 100] [--index eval-esci-us] [--threads N]
        [--skip-speed] [--skip-quality] [--out bench/results]

All on the shared ESCI data (queries, judgments, product texts from `product_to_text`):

- speed, one request at a time: a request is a real query with its judged pool topped up to
  the candidate count with seeded random ESCI products (a 50-candidate request is the first 50).
  Four ways to score it with the same checkpoint, taking turns request by request:
  ``naive`` (sentence-transformers ``CrossEncoder.predict`` on the request, fp32, max_length
  512, batches of 32 in input order: no length bucketing), ``in-process``
  (`InProcessCrossEncoder` as shipped), ``onnx-fp32`` and ``onnx-int8`` (`OnnxCrossEncoder`).
  Wall and CPU time per request; padded tokens per request show what bucketing saves,
  independent of the machine's load. Then the query encoder: torch vs ONNX (INT8, fp32) on
  every real query of both shared sets, with the cosine between their vectors.
- quality: nDCG@10 (ESCI gains) of the ``rerank`` stage on each query's judged pool
  (`plugin.offline_eval`, pool protocol) with fp32 and INT8 of the same export, and of the
  ``vector`` stage on the full catalog (index ``--index`` under SHOPRANK_HOME) with queries
  encoded by torch and by ONNX INT8; paired bootstrap CIs of the differences.

Writes ``onnx-quality-<date>.{json,md}`` to ``--out`` and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import percentile
from bench.triton_load import REPO, machine

DATA = REPO.parent / "shared" / "data"
NAIVE_MAX_LENGTH = 512
BATCH = 32
#: The issue's bound on the INT8 reranker's nDCG@10 change.
MAX_NDCG_DROP = 0.005

Scorer = Callable[[str, Sequence[str]], Sequence[float]]


def esci_requests(
    data: Path, count: int, candidates: int, seed: int
) -> list[tuple[str, list[str]]]:
    """``count`` seeded ESCI queries, each with its judged pool + random products, as texts."""
    from indexer.catalog import load_catalog
    from indexer.schema import product_to_text
    from reranker.metrics import load_qrels, load_queries

    queries = load_queries(data / "queries.tsv")
    qrels = load_qrels(data / "qrels.txt")
    products = {p.id: p for p in load_catalog(data / "products.jsonl.gz").products}
    rng = random.Random(seed)
    ids = sorted(products)
    requests = []
    for qid in rng.sample(sorted(q for q in queries if q in qrels), count):
        pool = [pid for pid in sorted(qrels[qid]) if pid in products]
        rng.shuffle(pool)
        fill = [pid for pid in rng.sample(ids, candidates * 2) if pid not in qrels[qid]]
        chosen = (pool + fill)[:candidates]
        rng.shuffle(chosen)  # judged products are not all at the front
        requests.append((queries[qid], [product_to_text(products[pid]) for pid in chosen]))
    return requests


def timed_turns(
    scorers: dict[str, Scorer], requests: list[tuple[str, list[str]]], candidates: int
) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds per request by method; methods take turns request by request."""
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in scorers}
    names = list(scorers)
    for number, (query, texts) in enumerate(requests):
        for name in names[number % len(names):] + names[: number % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            scorers[name](query, texts[:candidates])
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def padded_tokens_per_request(
    tokenizer: Any, requests: list[tuple[str, list[str]]], candidates: int, max_length: int
) -> dict[str, float]:
    """Mean tokens computed per request: input-order batches at 512 (naive), character-sorted
    batches (sentence-transformers' predict, in-process) and token-sorted batches (ONNX)."""
    from indexer.batching import length_batches, padded_tokens

    totals: dict[str, list[int]] = {"naive": [], "in-process": [], "onnx": [], "unpadded": []}
    for query, texts in requests:
        texts = texts[:candidates]
        short = [len(ids) for ids in tokenizer([query] * len(texts), texts, truncation=True,
                                               max_length=max_length)["input_ids"]]
        full = [len(ids) for ids in tokenizer([query] * len(texts), texts, truncation=True,
                                              max_length=NAIVE_MAX_LENGTH)["input_ids"]]
        in_order = [list(range(i, min(i + BATCH, len(texts)))) for i in range(0, len(texts), BATCH)]
        characters = length_batches([len(query) + len(t) for t in texts], BATCH)
        totals["naive"].append(padded_tokens(full, in_order))
        totals["in-process"].append(padded_tokens(short, characters))
        totals["onnx"].append(padded_tokens(short, length_batches(short, BATCH)))
        totals["unpadded"].append(sum(short))
    return {name: statistics.fmean(values) for name, values in totals.items()}


def speed(
    checkpoint: Path, export: Path, requests: list[tuple[str, list[str]]], sizes: list[int],
    threads: int | None,
) -> dict[str, Any]:
    from reranker.cross_encoder import InProcessCrossEncoder
    from reranker.onnx_cross_encoder import OnnxCrossEncoder

    in_process = InProcessCrossEncoder(checkpoint)
    naive_model = InProcessCrossEncoder(checkpoint, max_length=NAIVE_MAX_LENGTH).model

    def naive(query: str, texts: Sequence[str]) -> list[float]:
        # predict() sorts each call's pairs by length; calling it per 32 in input order
        # pads as an unbucketed loop would.
        scores: list[float] = []
        for start in range(0, len(texts), BATCH):
            chunk = [(query, text) for text in texts[start : start + BATCH]]
            scores += naive_model.predict(chunk, batch_size=BATCH,
                                          show_progress_bar=False).tolist()
        return scores

    scorers: dict[str, Scorer] = {
        "naive": naive,
        "in-process": in_process.score,
        "onnx-fp32": OnnxCrossEncoder(export, precision="fp32", threads=threads).score,
        "onnx-int8": OnnxCrossEncoder(export, precision="int8", threads=threads).score,
    }
    for scorer in scorers.values():  # load models, first-call allocations
        scorer(requests[0][0], requests[0][1][:8])
    max_length = int(in_process.model.max_seq_length or 0)
    results: dict[str, Any] = {}
    for candidates in sizes:
        times = timed_turns(scorers, requests, candidates)
        rows = {}
        for name, measured in times.items():
            wall_ms = [s * 1000 for s in measured["wall"]]
            rows[name] = {
                "p50_ms": percentile(wall_ms, 50),
                "p95_ms": percentile(wall_ms, 95),
                "cpu_p50_ms": percentile([s * 1000 for s in measured["cpu"]], 50),
                "pairs_per_s": candidates * len(wall_ms) / sum(measured["wall"]),
            }
        for row in rows.values():
            row["p50_speedup_vs_naive"] = rows["naive"]["p50_ms"] / row["p50_ms"]
            row["p50_speedup_vs_in_process"] = rows["in-process"]["p50_ms"] / row["p50_ms"]
        results[str(candidates)] = {
            "methods": rows,
            "tokens": padded_tokens_per_request(naive_model.tokenizer, requests, candidates,
                                                max_length),
        }
        print(f"{candidates} candidates: " + ", ".join(
            f"{n} p50 {r['p50_ms']:,.0f} ms" for n, r in rows.items()), flush=True)
    return {"max_length": max_length, "results": results}


def query_encoding(cache: Path, queries: list[str]) -> dict[str, Any]:
    """Latency of encoding each real query once, and cosine agreement with torch."""
    from indexer.encoder import BiEncoder

    encoders = {
        "torch": BiEncoder(query_cache_size=0),
        "onnx-int8": BiEncoder(query_cache_size=0, query_backend="onnx-int8",
                               onnx_cache_dir=cache),
        "onnx-fp32": BiEncoder(query_cache_size=0, query_backend="onnx", onnx_cache_dir=cache),
    }
    started = time.perf_counter()
    encoders["onnx-int8"].encode_query("warm up")  # exports on first use
    export_seconds = time.perf_counter() - started
    for encoder in encoders.values():
        encoder.encode_query("warm up")
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    names = list(encoders)
    for number, query in enumerate(queries):
        for name in names[number % len(names):] + names[: number % len(names)]:
            start = time.perf_counter()
            vectors[name].append(encoders[name].encode_query(query))
            seconds[name].append(time.perf_counter() - start)
    torch_vectors = np.stack(vectors["torch"])
    rows: dict[str, Any] = {}
    for name in encoders:
        ms = [s * 1000 for s in seconds[name]]
        cosine = (np.stack(vectors[name]) * torch_vectors).sum(axis=1)
        rows[name] = {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
                      "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}
    return {"queries": len(queries), "export_seconds": export_seconds, "methods": rows}


class Recording:
    """A reranker that keeps every score it returns, to compare two precisions pair by pair."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.scores: list[list[float]] = []

    @property
    def name(self) -> str:
        return str(self.inner.name)

    @property
    def circuit_open(self) -> bool:
        return bool(self.inner.circuit_open)

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        values: list[float] = self.inner.score(query, texts)
        self.scores.append(values)
        return values

    def close(self) -> None:
        self.inner.close()


def score_agreement(first: list[list[float]], second: list[list[float]]) -> dict[str, float]:
    """Largest and mean absolute score difference, and the mean per-query Spearman rho."""
    from scipy.stats import spearmanr

    diffs = np.abs(np.concatenate(first) - np.concatenate(second))
    rhos = [float(spearmanr(a, b).statistic) for a, b in zip(first, second, strict=True)
            if len(a) > 2]
    return {"pairs": int(diffs.size), "max_abs": float(diffs.max()),
            "mean_abs": float(diffs.mean()), "mean_spearman": statistics.fmean(rhos)}


def quality(
    export: Path, data: Path, index_root: Path, cache: Path, threads: int | None, seed: int
) -> dict[str, Any]:
    """Pool-protocol rerank nDCG@10 with fp32 vs INT8; full-catalog vector nDCG@10 with torch
    vs ONNX INT8 query vectors."""
    from indexer.encoder import BiEncoder
    from indexer.local_store import LocalStore
    from plugin.offline_eval import evaluate_stages
    from plugin.pipeline import SearchPipeline
    from reranker.metrics import ESCI_GAINS, load_qrels, load_queries, paired_bootstrap
    from reranker.onnx_cross_encoder import OnnxCrossEncoder

    queries = load_queries(data / "queries.tsv")
    qrels = load_qrels(data / "qrels.txt")
    store = LocalStore(index_root)
    torch_encoder = BiEncoder()
    reports = {}
    recorded = {}
    for precision in ("fp32", "int8"):
        reranker = Recording(OnnxCrossEncoder(export, precision=precision,  # type: ignore[arg-type]
                                              threads=threads))
        recorded[precision] = reranker.scores
        pipeline = SearchPipeline(store, torch_encoder, reranker)
        started = time.perf_counter()
        (result,) = evaluate_stages(pipeline, queries, qrels, ["rerank"], protocol="pool",
                                    gains=ESCI_GAINS)
        reports[f"rerank-{precision}"] = (result.report, time.perf_counter() - started)
        print(f"rerank {precision}: nDCG@10 {result.report.ndcg:.4f}", flush=True)
    for backend in ("torch", "onnx-int8"):
        encoder = BiEncoder(query_backend=backend, onnx_cache_dir=cache)  # type: ignore[arg-type]
        pipeline = SearchPipeline(store, encoder)
        started = time.perf_counter()
        (result,) = evaluate_stages(pipeline, queries, qrels, ["vector"], protocol="full",
                                    gains=ESCI_GAINS)
        reports[f"vector-{backend}"] = (result.report, time.perf_counter() - started)
        print(f"vector {backend}: nDCG@10 {result.report.ndcg:.4f}", flush=True)

    def change(base: str, other: str) -> dict[str, Any]:
        first, second = reports[base][0], reports[other][0]
        diff = paired_bootstrap(
            {q: v["ndcg"] for q, v in first.per_query.items()},
            {q: v["ndcg"] for q, v in second.per_query.items()}, seed=seed,
        )
        return {"from": base, "to": other, "ndcg_from": first.ndcg, "ndcg_to": second.ndcg,
                "mean": diff.mean, "ci95": [diff.low, diff.high]}

    return {
        "queries": reports["rerank-fp32"][0].queries,
        "runs": {name: {"ndcg@10": rep.ndcg, "mrr@10": rep.mrr, "seconds": seconds}
                 for name, (rep, seconds) in reports.items()},
        "rerank_int8_vs_fp32": change("rerank-fp32", "rerank-int8"),
        "scores_int8_vs_fp32": score_agreement(recorded["fp32"], recorded["int8"]),
        "vector_onnx_int8_vs_torch": change("vector-torch", "vector-onnx-int8"),
    }


def report(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"# ONNX Runtime (fp32, INT8) vs. torch on CPU ({m['date'][:10]})",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores; load average {m['load_average']} before, "
        f"{data['load_average_after']} after (other jobs share these cores: wall times are "
        "noisy, CPU times less so)",
        f"- software: Python {m['python']}, torch {m['torch']} ({data['torch_threads']} threads), "
        f"transformers {m['transformers']}, sentence-transformers {m['sentence_transformers']}, "
        f"onnxruntime {data['onnxruntime']}, onnx {data['onnx']}; ONNX threads "
        f"{data['threads'] or 'default'}",
        f"- checkpoint: {data['checkpoint']}; export {data['export_seconds']:.0f} s, "
        f"model.onnx {data['sizes'].get('model.onnx', 0) / 1e6:.1f} MB, model.int8.onnx "
        f"{data['sizes'].get('model.int8.onnx', 0) / 1e6:.1f} MB; INT8 {data['int8']}",
        f"- command: `{data['command']}`, {data['seconds']:.0f} s in all",
    ]
    if "speed" in data:
        s = data["speed"]
        lines += [
            "",
            f"## Reranking speed ({data['requests']} real ESCI requests per size, one at a time; "
            f"max_length {s['max_length']}, naive {NAIVE_MAX_LENGTH})",
            "",
            "| candidates | method | p50 ms | p95 ms | CPU p50 ms | pairs/s | p50 vs naive "
            "| p50 vs in-process | tokens/request |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for candidates, block in s["results"].items():
            tokens = block["tokens"]
            for name, row in block["methods"].items():
                computed = tokens["onnx" if name.startswith("onnx") else name]
                lines.append(
                    f"| {candidates} | {name} | {row['p50_ms']:,.0f} | {row['p95_ms']:,.0f} | "
                    f"{row['cpu_p50_ms']:,.0f} | {row['pairs_per_s']:,.1f} | "
                    f"{row['p50_speedup_vs_naive']:.2f}x | "
                    f"{row['p50_speedup_vs_in_process']:.2f}x | {computed:,.0f} |"
                )
            lines.append(f"| {candidates} | (unpadded) | | | | | | | {tokens['unpadded']:,.0f} |")
    if "query" in data:
        q = data["query"]
        lines += [
            "",
            f"## Query encoder ({q['queries']} real queries of both shared sets, one at a time; "
            f"first-use export {q['export_seconds']:.0f} s)",
            "",
            "| backend | p50 ms | p95 ms | min cosine vs torch | mean cosine |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in q["methods"].items():
            lines.append(f"| {name} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
                         f"{row['min_cosine']:.4f} | {row['mean_cosine']:.4f} |")
    if "quality" in data:
        qa = data["quality"]
        lines += [
            "",
            f"## Quality (ESCI, {qa['queries']} judged queries, gains E=1 S=0.1 C=0.01 I=0)",
            "",
            "| comparison | nDCG@10 before | nDCG@10 after | change [95% CI] |",
            "|---|---:|---:|---|",
        ]
        for key, label in (("rerank_int8_vs_fp32", "rerank, judged pool: fp32 -> INT8"),
                           ("vector_onnx_int8_vs_torch",
                            "vector, full catalog: torch -> ONNX INT8 queries")):
            c = qa[key]
            lines.append(f"| {label} | {c['ndcg_from']:.4f} | {c['ndcg_to']:.4f} | "
                         f"{c['mean']:+.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] |")
        agreement = qa["scores_int8_vs_fp32"]
        lines += ["", f"INT8 vs fp32 scores over {agreement['pairs']:,} judged pairs: largest "
                  f"difference {agreement['max_abs']:.4f}, mean {agreement['mean_abs']:.4f}; "
                  f"mean per-query Spearman rho {agreement['mean_spearman']:.4f}."]
        drop = -qa["rerank_int8_vs_fp32"]["mean"]
        verdict = "within" if drop <= MAX_NDCG_DROP else "OUTSIDE"
        lines += ["", f"INT8 reranking changes nDCG@10 by {-drop:+.4f}: {verdict} the issue's "
                  f"bound of {MAX_NDCG_DROP}."]
    return "\n".join(lines) + "\n"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a tuned cross-encoder (LoRA artifact or full checkpoint)")
    parser.add_argument("--requests", type=int, default=8, help="requests per size")
    parser.add_argument("--candidates", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--data", type=Path, default=DATA / "esci-us")
    parser.add_argument("--index", default="eval-esci-us",
                        help="local index of --data's catalog under SHOPRANK_HOME")
    parser.add_argument("--threads", type=int, help="torch and ONNX intra-op threads")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    import torch

    from indexer.onnx_files import read_onnx_card
    from indexer.settings import IndexerSettings
    from reranker.metrics import load_queries
    from reranker.onnx_export import export_onnx

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data: dict[str, Any] = {
        "command": " ".join(["python3 -m bench.onnx_quality", *sys.argv[1:]]),
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "threads": args.threads,
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "checkpoint": str(args.checkpoint),
        "requests": args.requests,
    }
    with tempfile.TemporaryDirectory(prefix="onnx-quality-") as scratch:
        export, cache = Path(scratch) / "cross-encoder", Path(scratch) / "query-cache"
        export_start = time.perf_counter()
        export_onnx(args.checkpoint, export)
        data["export_seconds"] = time.perf_counter() - export_start
        card = read_onnx_card(export)
        data["sizes"], data["int8"] = card.files, card.int8
        if not args.skip_speed:
            requests = esci_requests(args.data, args.requests, max(args.candidates), args.seed)
            data["speed"] = speed(args.checkpoint, export, requests, args.candidates,
                                  args.threads)
            real = [*load_queries(args.data / "queries.tsv").values()]
            icecat = args.data.parent / "icecat" / "queries.tsv"
            if icecat.is_file():
                real += load_queries(icecat).values()
            data["query"] = query_encoding(cache, real)
        if not args.skip_quality:
            root = IndexerSettings().indexes_dir / args.index
            data["quality"] = quality(export, args.data, root, cache, args.threads, args.seed)
    data["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    data["seconds"] = time.perf_counter() - started
    text = report(data)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"onnx-quality-{data['machine']['date'][:10]}"
    (args.out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (args.out / f"{name}.md").write_text(text)
    print(f"wrote {args.out / name}.json and .md")


if __name__ == "__main__":
    main()
