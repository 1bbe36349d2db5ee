"""Reranking 50 and 100 candidates on this CPU: Triton vs. in-process vs. the naive baseline.

    python3 -m bench.triton_cpu [--requests 12] [--candidates 50 100] [--checkpoint DIR]
                                [--triton-url URL] [--out bench/results]

Three ways to score the same (query, product) pairs with the same checkpoint, one request at a
time (concurrency 1):

- triton: `TritonReranker` against a CPU Triton server (config.pbtxt: KIND_CPU, fp32) that the
  bench starts with scripts/triton on a temporary model repository and ports 18300-18302, and
  stops at the end; or ``--triton-url`` for a running one;
- in-process: `InProcessCrossEncoder` (max_length 256 unless the checkpoint's card says otherwise);
- naive: sentence-transformers ``CrossEncoder(checkpoint, max_length=512).predict(pairs)`` once
  per request: fp32, the model's full length.

Requests: N real ESCI queries, each with 100 seeded demo-catalog products; a 50-candidate
request is the first 50 of them. The methods take turns request by request (in rotating order),
so a change in the machine's background load hits all of them alike; each first scores one small
warm-up request. The default checkpoint is the packaged MiniLM weights with a fresh one-logit head
(`packaged_cross_encoder(max_length=256)`) saved to a temporary folder: its scores mean nothing,
its speed is a tuned model's. Writes ``triton-cpu-<date>.{json,md}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.triton_load import (
    DEFAULT_QUERIES,
    REPO,
    build_repository,
    machine,
    percentile,
    sample_requests,
)

PORTS = {"HTTP": 18300, "GRPC": 18301, "METRICS": 18302}
#: The bench's own Triton home (unpacked server, pid file, log): never the default server's.
BENCH_HOME = REPO / ".cache" / "triton-bench"
NAIVE_MAX_LENGTH = 512

Scorer = Callable[[str, Sequence[str]], Sequence[float]]


def _seed_wheel(home: Path) -> None:
    """Reuse the wheel the default Triton home already downloaded (55 MB) instead of fetching it."""
    wheels = home / "wheel"
    if any(wheels.glob("nvidia_pytriton-*.whl")):
        return
    for cached in sorted((REPO / ".cache" / "triton" / "wheel").glob("nvidia_pytriton-*.whl")):
        wheels.mkdir(parents=True, exist_ok=True)
        (wheels / cached.name).symlink_to(cached)
        return


@contextmanager
def triton_server(checkpoint: Path, home: Path) -> Iterator[str]:
    """A CPU Triton serving ``checkpoint`` from a temporary repository; its URL."""
    env = {**os.environ, "SHOPRANK_TRITON_HOME": str(home)}
    env |= {f"SHOPRANK_TRITON_{kind}_PORT": str(port) for kind, port in PORTS.items()}
    script = str(REPO / "scripts" / "triton")
    _seed_wheel(home)
    with tempfile.TemporaryDirectory(prefix="triton-cpu-bench-") as scratch:
        repository = Path(scratch) / "models"
        build_repository(repository, checkpoint)
        try:
            subprocess.run([script, "start", "--repository", str(repository)], env=env, check=True)
            yield f"127.0.0.1:{PORTS['HTTP']}"
        finally:
            subprocess.run([script, "stop"], env=env, check=False)


def default_checkpoint(folder: Path) -> Path:
    from reranker.cross_encoder import packaged_cross_encoder

    packaged_cross_encoder(max_length=256).save(str(folder))
    return folder


def measure(
    scorers: dict[str, Scorer], requests: list[tuple[str, list[str]]], candidates: int
) -> tuple[dict[str, list[float]], dict[str, list[list[float]]]]:
    """Seconds per request and the scores, by method; methods take turns per request."""
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    scores: dict[str, list[list[float]]] = {name: [] for name in scorers}
    names = list(scorers)
    for number, (query, texts) in enumerate(requests):
        turn = names[number % len(names):] + names[: number % len(names)]
        for name in turn:
            start = time.perf_counter()
            values = scorers[name](query, texts[:candidates])
            seconds[name].append(time.perf_counter() - start)
            scores[name].append([float(v) for v in values])
    return seconds, scores


def max_difference(first: list[list[float]], second: list[list[float]]) -> float:
    """The largest absolute difference between two methods' scores for the same pairs."""
    return max(
        abs(a - b)
        for one, other in zip(first, second, strict=True)
        for a, b in zip(one, other, strict=True)
    )


def summarize(seconds: list[float], pairs: int) -> dict[str, float]:
    ms = [value * 1000 for value in seconds]
    return {"p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "mean_ms": statistics.fmean(ms), "pairs_per_s": pairs * len(ms) / sum(seconds)}


def token_lengths(tokenizer: Any, requests: list[tuple[str, list[str]]], cap: int) -> float:
    """Mean tokens per pair when truncated at ``cap``."""
    counts = [
        len(ids)
        for query, texts in requests
        for ids in tokenizer([query] * len(texts), texts, truncation="longest_first",
                             max_length=cap)["input_ids"]
    ]
    return statistics.fmean(counts)


def report(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"# Reranking on CPU: Triton vs. in-process vs. naive ({m['date'][:10]})",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores, torch threads {data['torch_threads']}; "
        f"load average {m['load_average']} before, {data['load_average_after']} after "
        "(other jobs share these cores)",
        f"- software: Python {m['python']}, torch {m['torch']}, transformers "
        f"{m['transformers']}, sentence-transformers {m['sentence_transformers']}, Triton "
        f"{data['triton_version']}",
        f"- checkpoint: {data['checkpoint']}",
        f"- requests: {data['requests']} real ESCI queries x {data['candidates']} seeded demo "
        f"products, concurrency 1; mean tokens per pair {data['tokens_256']:.0f} at max_length "
        f"256, {data['tokens_512']:.0f} at 512",
        f"- methods: {'; '.join(f'{k}: {v}' for k, v in data['methods'].items())}",
        f"- Triton vs. in-process scores: max abs difference {data['triton_vs_in_process']:.2e}",
        f"- command: `{data['command']}`, {data['seconds']:.0f} s in all",
        "",
        "| candidates | method | p50 ms | p95 ms | mean ms | pairs/s | p50 speed-up vs naive | "
        "pairs/s vs naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for candidates, rows in data["results"].items():
        for name, row in rows.items():
            lines.append(
                f"| {candidates} | {name} | {row['p50_ms']:,.0f} | {row['p95_ms']:,.0f} | "
                f"{row['mean_ms']:,.0f} | {row['pairs_per_s']:,.1f} | "
                f"{row['p50_speedup_vs_naive']:.2f}x | "
                f"{row['pairs_per_s_vs_naive']:.2f}x |"
            )
    if data["requests"] < 20:
        lines += ["", f"With {data['requests']} requests per row, p95 (nearest rank) is the "
                  "slowest request seen."]
    return "\n".join(lines) + "\n"


def triton_version(url: str) -> str:
    from tritonclient.http import InferenceServerClient

    client = InferenceServerClient(url)
    try:
        return str(client.get_server_metadata().get("version"))
    finally:
        client.close()


def checkpoint_for(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """The checkpoint all three methods score with, and how the report names it."""
    if args.checkpoint is not None:
        return args.checkpoint, str(args.checkpoint)
    return (
        default_checkpoint(scratch / "packaged-fresh-head"),
        "packaged all-MiniLM-L6-v2 weights + fresh 1-logit head (full checkpoint)",
    )


@contextmanager
def served(url: str | None, checkpoint: Path) -> Iterator[str]:
    """``url``, or the URL of a server started here for ``checkpoint`` (stopped on exit)."""
    if url is not None:
        yield url
        return
    with triton_server(checkpoint, BENCH_HOME) as started:
        yield started


def compare(
    scorers: dict[str, Scorer], requests: list[tuple[str, list[str]]], sizes: list[int]
) -> tuple[dict[int, dict[str, dict[str, float]]], float]:
    """Figures by request size and method, with ratios against the naive baseline; and the
    largest difference between Triton's and the in-process scores."""
    results: dict[int, dict[str, dict[str, float]]] = {}
    worst = 0.0
    for candidates in sizes:
        seconds, scores = measure(scorers, requests, candidates)
        rows = {name: summarize(values, candidates) for name, values in seconds.items()}
        for row in rows.values():
            row["p50_speedup_vs_naive"] = rows["naive"]["p50_ms"] / row["p50_ms"]
            row["pairs_per_s_vs_naive"] = row["pairs_per_s"] / rows["naive"]["pairs_per_s"]
        results[candidates] = rows
        worst = max(worst, max_difference(scores["triton"], scores["in-process"]))
        medians = (f"{name} p50 {row['p50_ms']:,.0f} ms" for name, row in rows.items())
        print(f"{candidates} candidates: {', '.join(medians)}", flush=True)
    return results, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12, help="real queries (requests per size)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--checkpoint", type=Path, help="a full or LoRA checkpoint folder")
    parser.add_argument("--triton-url", help="a running server that serves --checkpoint")
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    import torch
    from sentence_transformers import CrossEncoder

    from reranker.cross_encoder import InProcessCrossEncoder
    from reranker.triton import TritonReranker

    started = time.perf_counter()
    about = machine()
    requests = sample_requests(args.requests, max(args.candidates), seed=args.seed,
                               queries=args.queries)
    with tempfile.TemporaryDirectory(prefix="triton-cpu-ckpt-") as scratch:
        checkpoint, label = checkpoint_for(args, Path(scratch))
        with served(args.triton_url, checkpoint) as url:
            triton = TritonReranker(url, checkpoint=checkpoint, timeout_seconds=600)
            in_process = InProcessCrossEncoder(checkpoint)
            naive = CrossEncoder(str(checkpoint), max_length=NAIVE_MAX_LENGTH, device="cpu",
                                 local_files_only=True)
            scorers: dict[str, Scorer] = {
                "triton": triton.score,
                "in-process": in_process.score,
                "naive": lambda query, texts: naive.predict(
                    [(query, text) for text in texts], show_progress_bar=False
                ).tolist(),  # the defaults otherwise: batches of 32, fp32
            }
            try:
                for scorer in scorers.values():  # load models, first-call allocations
                    scorer(requests[0][0], requests[0][1][:8])
                results, worst = compare(scorers, requests, args.candidates)
                version = triton_version(url)
            finally:
                triton.close()
        tokenizer = naive.tokenizer
        data = {
            "command": " ".join(["python3 -m bench.triton_cpu", *sys.argv[1:]]),
            "machine": about,
            "torch_threads": torch.get_num_threads(),
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "triton_version": version,
            "checkpoint": label,
            "requests": args.requests,
            "candidates": args.candidates,
            "seed": args.seed,
            "tokens_256": token_lengths(tokenizer, requests, 256),
            "tokens_512": token_lengths(tokenizer, requests, NAIVE_MAX_LENGTH),
            "methods": {
                "triton": f"TritonReranker -> {url}, CPU instance, fp32, max_length "
                          f"{triton.max_length}, all pairs in one forward pass",
                "in-process": f"InProcessCrossEncoder, max_length "
                              f"{in_process.model.max_seq_length}, pairs sorted by length into "
                              "batches of 32",
                "naive": f"CrossEncoder.predict per request, max_length {naive.max_seq_length}, "
                         "pairs sorted by length into batches of 32",
            },
            "triton_vs_in_process": worst,
            "results": results,
            "seconds": time.perf_counter() - started,
        }
    text = report(data)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"triton-cpu-{about['date'][:10]}"
    (args.out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(text)
    print(f"wrote {args.out / name}.json and .md")


if __name__ == "__main__":
    main()
