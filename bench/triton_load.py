"""A bounded load generator for the Triton reranker: pairs/s and p50/p95 per concurrency.

Three steps, run from the repository root:

    # here, in the project's environment: real queries x seeded demo products, tokenized once
    # exactly as `TritonReranker` tokenizes them (its `encode`), beside the model's config.json
    python3 -m bench.triton_load prepare --out DIR [--requests 48 --candidates 100 --max-length 256]

    # a model repository holding one exported full checkpoint (version 1): a real checkpoint,
    # or random weights in the architecture of a config.json (same shapes, so the same speed)
    python3 -m bench.triton_load repository REPO_DIR --checkpoint CKPT
    python3 -m bench.triton_load repository REPO_DIR --random-weights DIR/config.json

    # against a running server, CPU or GPU
    python3 -m bench.triton_load run --url 127.0.0.1:18300 --inputs DIR --concurrency 1 8 32 \
        --seconds 8 [--precision fp32 fp16 fp16+buckets=64,128,256 fp16+delay=0] [--targets] \
        [--out DIR --name NAME]

`run` keeps exactly C requests in flight (C asyncio workers sharing one tritonclient.http.aio
client, as `TritonReranker` sends them) for a fixed number of requests or a fixed time per
point, whichever ends first, after a warm-up at the same concurrency. ``--precision`` reloads
the model through Triton's repository API with the config it started with and a variant's
changes (a load-time config override, no restart): its ``precision`` parameter, optionally the
dynamic batcher's queue delay and the model's ``length_buckets`` (one forward pass per
candidate-length bucket), then measures. Latency is per
request, client side; pairs/s counts answered pairs over the measured wall time. Triton's
statistics for the same interval give the server's queue and compute time per request and the
pairs per forward pass (what the dynamic batcher joined). The report adds the arithmetic each
point sustained (model FLOPs on the pairs' real tokens per second) as a share of the GPU's
datasheet peak for its precision (`PEAK_TFLOPS`, or ``--peak-tflops``).

Nothing here needs the project's dependencies except ``prepare`` (the tokenizer and catalog)
and ``repository`` (``reranker.triton_export``, which needs pydantic): `run` needs numpy and
tritonclient[http] only, so it runs on a bare GPU machine with a few carried wheels
(bench/triton_gpu.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.machine import cpu_model, percentile
from reranker.triton_contract import INPUTS, MODEL_NAME, OUTPUT

if TYPE_CHECKING:
    from reranker.triton_export import ExportedVersion

REPO = Path(__file__).resolve().parents[1]
DEFAULT_QUERIES = REPO.parent / "shared" / "data" / "esci-us" / "queries.tsv"
TEMPLATE = REPO / "triton_models" / MODEL_NAME
REQUESTS_FILE = "requests.npz"
META_FILE = "requests.json"
CONFIG_FILE = "config.json"
#: The GPU targets: p95 of a 100-candidate request at concurrency 8, and pairs/s.
TARGET_P95_MS = 10.0
TARGET_CONCURRENCY = 8
TARGET_CANDIDATES = 100
TARGET_PAIRS_PER_S = 50_000
#: Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets, by a substring of nvidia-smi's name:
#: FP16 on tensor cores, and FP32 on CUDA cores (torch leaves TF32 matmuls off by default).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200 NVL": {"fp16": 835.0, "fp32": 60.0},
    "H200": {"fp16": 989.4, "fp32": 66.9},
    "H100 NVL": {"fp16": 835.0, "fp32": 60.0},
    "H100 PCIe": {"fp16": 756.0, "fp32": 51.2},
    "H100": {"fp16": 989.4, "fp32": 66.9},
}
# Token ids fit uint16 (BERT's vocabulary is 30,522), mask and segment ids uint8: the file stays
# small enough to carry; `load_requests` restores the contract's INT64.
_STORED = {"input_ids": np.uint16, "attention_mask": np.uint8, "token_type_ids": np.uint8}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def gpus() -> list[dict[str, str]]:
    """nvidia-smi's name, driver and memory of each GPU; empty without nvidia-smi or a GPU."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
             "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [line.split(", ") for line in out.strip().splitlines() if line.strip()]
    return [{"name": r[0], "driver": r[1], "memory": r[2]} for r in rows if len(r) == 3]


def peak_tflops(gpu_names: list[str]) -> dict[str, float] | None:
    """The first GPU's datasheet peaks (`PEAK_TFLOPS`), or None when it is not listed."""
    for name in gpu_names[:1]:
        for key, peaks in PEAK_TFLOPS.items():  # most specific first
            if key in name:
                return peaks
    return None


def flops_per_pair(config: dict[str, Any], tokens: float) -> float:
    """Forward-pass FLOPs of one BERT pair of ``tokens`` tokens (multiply-add = 2 FLOPs): per
    layer the Q, K, V and output projections (8·L·H²), the feed-forward (4·L·H·I) and the
    attention products (4·L²·H); embeddings and the one-logit head are negligible."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    per_layer = 8 * tokens * hidden**2 + 4 * tokens * hidden * inner + 4 * tokens**2 * hidden
    return float(config["num_hidden_layers"] * per_layer)


def request_flops(
    folder: Path, requests: list[dict[str, np.ndarray[Any, Any]]]
) -> dict[str, float]:
    """Mean FLOPs per pair over the prepared requests: on each pair's real tokens (the work a
    perfectly bucketed server does), and padded to its request's longest pair (what one padded
    forward pass per request computes)."""
    config = json.loads((folder / CONFIG_FILE).read_text())
    real, padded, pairs = 0.0, 0.0, 0
    for request in requests:
        mask = request[INPUTS[1].name]
        width = mask.shape[1]
        real += sum(flops_per_pair(config, int(n)) for n in mask.sum(axis=1))
        padded += len(mask) * flops_per_pair(config, width)
        pairs += len(mask)
    return {"real": real / pairs, "padded": padded / pairs}


@dataclass(frozen=True)
class Variant:
    """One model configuration to measure: ``PRECISION[+delay=US][+buckets=W,W,...]``.

    ``delay`` sets the dynamic batcher's ``max_queue_delay_microseconds``, ``buckets`` the
    model's ``length_buckets`` parameter (one forward pass per candidate-length bucket); what
    a variant leaves out keeps the config the server started with.
    """

    label: str
    precision: str
    delay_us: int | None = None
    buckets: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Variant:
        precision, *options = spec.split("+")
        if precision not in ("fp32", "fp16"):
            raise argparse.ArgumentTypeError(f"{spec!r}: starts with fp32 or fp16")
        fields: dict[str, Any] = {}
        for option in options:
            key, _, value = option.partition("=")
            if key == "delay" and value.isdigit():
                fields["delay_us"] = int(value)
            elif key == "buckets" and all(p.isdigit() for p in value.split(",")):
                fields["buckets"] = value
            else:
                raise argparse.ArgumentTypeError(
                    f"{spec!r}: options are +delay=MICROSECONDS and +buckets=W,W,..."
                )
        return cls(label=spec, precision=precision, **fields)

    def config(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` (the config the server started with) with this variant's changes."""
        config: dict[str, Any] = json.loads(json.dumps(base))
        parameters = config.setdefault("parameters", {})
        parameters["precision"] = {"string_value": self.precision}
        parameters["length_buckets"] = {"string_value": self.buckets or ""}
        if self.delay_us is not None:
            config.setdefault("dynamic_batching", {})["max_queue_delay_microseconds"] = (
                self.delay_us
            )
        return config


def machine() -> dict[str, Any]:
    """What the numbers were measured on; versions come from package metadata (no imports)."""
    cpu = cpu_model()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "sentence_transformers": _version("sentence-transformers"),
        "numpy": _version("numpy"),
        "tritonclient": _version("tritonclient"),
        "platform": platform.platform(),
        "gpus": gpus(),
    }


def sample_requests(
    count: int, candidates: int, *, seed: int = 0, queries: Path = DEFAULT_QUERIES
) -> list[tuple[str, list[str]]]:
    """``count`` real queries, each with ``candidates`` demo-catalog product texts (seeded)."""
    from indexer.catalog import load_catalog
    from indexer.schema import product_to_text
    from plugin.demo import DEMO_CATALOG
    from reranker.metrics import load_queries

    texts = sorted(load_queries(queries).values())
    products = load_catalog(DEMO_CATALOG).products
    if count > len(texts) or candidates > len(products):
        raise SystemExit(
            f"--requests {count} / --candidates {candidates}: only {len(texts)} queries and "
            f"{len(products)} products"
        )
    rng = random.Random(seed)
    chosen = rng.sample(texts, count)
    return [(q, [product_to_text(p) for p in rng.sample(products, candidates)]) for q in chosen]


def prepare(
    out: Path, *, requests: int, candidates: int, max_length: int, seed: int, queries: Path
) -> dict[str, Any]:
    """Tokenize the requests once and write them, with the packaged model's config.json."""
    from indexer.model_files import packaged_model_path
    from reranker.triton import TritonReranker

    sampled = sample_requests(requests, candidates, seed=seed, queries=queries)
    # Its encode() is exactly what the production client sends; no server is contacted.
    client = TritonReranker("127.0.0.1:1", max_length=max_length)
    arrays: dict[str, Any] = {}
    widths, real = [], []
    try:
        for number, (query, texts) in enumerate(sampled):
            tensors = client.encode(query, texts)
            if int(tensors["input_ids"].max()) > np.iinfo(np.uint16).max:
                raise SystemExit("token ids above 65535: this tokenizer cannot be stored as uint16")
            for name, dtype in _STORED.items():
                arrays[f"r{number:04d}_{name}"] = tensors[name].astype(dtype)
            widths.append(int(tensors["input_ids"].shape[1]))
            real += tensors["attention_mask"].sum(axis=1).tolist()
    finally:
        client.close()
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / REQUESTS_FILE, **arrays)
    shutil.copy2(packaged_model_path() / CONFIG_FILE, out / CONFIG_FILE)
    meta = {
        "requests": requests, "candidates": candidates, "max_length": max_length, "seed": seed,
        "queries": [q for q, _ in sampled], "source": "ESCI queries x demo catalog products",
        "padded_tokens_mean": statistics.fmean(widths),
        "pair_tokens_mean": statistics.fmean(real),
        "pair_tokens_p50": percentile(real, 50),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_requests(folder: Path) -> tuple[list[dict[str, np.ndarray[Any, Any]]], dict[str, Any]]:
    """The prepared requests as INT64 tensors by input name, and their description."""
    path = folder / REQUESTS_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python3 -m bench.triton_load prepare` first")
    with np.load(path) as stored:
        count = len(stored.files) // len(INPUTS)
        requests = [
            {spec.name: stored[f"r{n:04d}_{spec.name}"].astype(np.int64) for spec in INPUTS}
            for n in range(count)
        ]
    return requests, json.loads((folder / META_FILE).read_text())


def build_repository(repository: Path, checkpoint: Path) -> ExportedVersion:
    """A model repository with the project's configs and ``checkpoint`` exported as version 1."""
    from reranker.triton_export import export_reranker

    model_dir = repository / MODEL_NAME
    model_dir.mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        shutil.copy2(TEMPLATE / name, model_dir / name)
    shutil.copytree(TEMPLATE / "configs", model_dir / "configs")
    return export_reranker(checkpoint, repository, version=1)


def random_checkpoint(config_file: Path, folder: Path, *, seed: int = 0) -> Path:
    """A one-logit classifier with random weights in the architecture ``config_file`` gives.

    Only for timing: shapes, and so the work per pair, equal the trained model's.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    settings = json.loads(config_file.read_text())
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    config.num_labels = 1
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class LoadPoint:
    """One measured point: ``concurrency`` requests in flight, for ``seconds``."""

    precision: str
    concurrency: int
    requests: int
    failed: int
    pairs: int
    seconds: float
    pairs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    client_cpu: float  # this process's CPU seconds per wall second: near 1.0 means client-bound
    server_queue_ms: float | None  # Triton's mean queue time per request
    server_compute_ms: float | None  # Triton's mean compute (forward pass) time per request
    pairs_per_forward: float | None  # pairs the dynamic batcher joined per forward pass
    first_error: str | None


def _server_totals(stats: dict[str, Any]) -> dict[str, int]:
    totals = {"inferences": 0, "executions": 0, "queue_n": 0, "queue_ns": 0,
              "compute_n": 0, "compute_ns": 0}
    for model in stats.get("model_stats", []):
        totals["inferences"] += int(model.get("inference_count", 0))
        totals["executions"] += int(model.get("execution_count", 0))
        inference = model.get("inference_stats", {})
        for key, part in (("queue", "queue"), ("compute", "compute_infer")):
            totals[f"{key}_n"] += int(inference.get(part, {}).get("count", 0))
            totals[f"{key}_ns"] += int(inference.get(part, {}).get("ns", 0))
    return totals


def _ratio(total: float, count: int) -> float | None:
    return total / count if count else None


class LoadGenerator:
    """C workers share one client; each sends the next prepared request as soon as its last
    one is answered, until the request count or the time is used up."""

    def __init__(self, url: str, requests: list[dict[str, np.ndarray[Any, Any]]]) -> None:
        from tritonclient.http.aio import InferenceServerClient, InferInput, InferRequestedOutput

        self.url = url.removeprefix("http://")
        # A reload (the config override) answers only once the model is loaded.
        self.client = InferenceServerClient(self.url, conn_limit=256, conn_timeout=240.0)
        self.pairs = [len(request[INPUTS[0].name]) for request in requests]
        self.inputs = []
        for request in requests:
            inputs = []
            for spec in INPUTS:
                item = InferInput(spec.name, list(request[spec.name].shape), spec.dtype)
                item.set_data_from_numpy(request[spec.name], binary_data=True)
                inputs.append(item)
            self.inputs.append(inputs)
        self.outputs = [InferRequestedOutput(OUTPUT.name, binary_data=True)]

    async def close(self) -> None:
        await self.client.close()

    async def load(
        self, variant: Variant, base: dict[str, Any], timeout: float = 240.0
    ) -> dict[str, Any]:
        """Reload the model with ``base`` changed as ``variant`` says; the new config."""
        await self.client.load_model(MODEL_NAME, config=json.dumps(variant.config(base)))
        deadline = time.monotonic() + timeout
        while not await self.client.is_model_ready(MODEL_NAME):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{MODEL_NAME} not ready {timeout:g} s after a reload")
            await asyncio.sleep(0.5)
        loaded: dict[str, Any] = await self.client.get_model_config(MODEL_NAME)
        return loaded

    async def _send(self, index: int) -> int:
        n = index % len(self.inputs)
        result = await self.client.infer(MODEL_NAME, self.inputs[n], outputs=self.outputs)
        scores = result.as_numpy(OUTPUT.name)
        if scores is None or scores.size != self.pairs[n]:
            raise ValueError(f"request {n}: {self.pairs[n]} pairs sent, scores {scores!r}")
        return self.pairs[n]

    async def _drive(
        self, concurrency: int, requests: int, seconds: float, offset: int
    ) -> tuple[list[float], int, list[str], float]:
        latencies: list[float] = []
        errors: list[str] = []
        answered = 0
        issued = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal answered, issued
            while issued < requests and time.perf_counter() < deadline:
                index = offset + issued
                issued += 1
                start = time.perf_counter()
                try:
                    pairs = await self._send(index)
                except Exception as e:  # tritonclient and aiohttp raise many kinds: count them
                    errors.append(" ".join(f"{type(e).__name__}: {e}".split()))
                    continue
                latencies.append(time.perf_counter() - start)
                answered += pairs

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, answered, errors, time.perf_counter() - start

    async def measure(
        self, precision: str, concurrency: int, *, requests: int, seconds: float, warmup: int
    ) -> LoadPoint:
        await self._drive(concurrency, warmup, seconds, offset=0)
        before = _server_totals(await self.client.get_inference_statistics(MODEL_NAME))
        cpu = time.process_time()
        latencies, pairs, errors, wall = await self._drive(
            concurrency, requests, seconds, offset=warmup
        )
        cpu = time.process_time() - cpu
        after = _server_totals(await self.client.get_inference_statistics(MODEL_NAME))
        delta = {key: after[key] - before[key] for key in after}
        ms = [value * 1000 for value in latencies] or [float("nan")]
        return LoadPoint(
            precision=precision, concurrency=concurrency, requests=len(latencies),
            failed=len(errors), pairs=pairs, seconds=wall, pairs_per_s=pairs / wall,
            p50_ms=percentile(ms, 50), p95_ms=percentile(ms, 95), p99_ms=percentile(ms, 99),
            mean_ms=statistics.fmean(ms), client_cpu=cpu / wall,
            server_queue_ms=_ratio(delta["queue_ns"] / 1e6, delta["queue_n"]),
            server_compute_ms=_ratio(delta["compute_ns"] / 1e6, delta["compute_n"]),
            pairs_per_forward=_ratio(delta["inferences"], delta["executions"]),
            first_error=errors[0] if errors else None,
        )


async def run_load(
    url: str,
    requests: list[dict[str, np.ndarray[Any, Any]]],
    *,
    concurrency: list[int],
    variants: list[Variant] | None,
    per_point: int,
    seconds: float,
    warmup: int,
) -> dict[str, Any]:
    """Every (variant, concurrency) point; variants None: the model as loaded."""
    generator = LoadGenerator(url, requests)
    points: list[LoadPoint] = []
    configs: dict[str, Any] = {}
    failed_loads: dict[str, str] = {}
    try:
        server = await generator.client.get_server_metadata()
        base = await generator.client.get_model_config(MODEL_NAME)
        reloads: list[Variant | None] = [*variants] if variants else [None]
        for variant in reloads:
            if variant is None:
                config = base
                label = config.get("parameters", {}).get("precision", {}).get(
                    "string_value", "?")
            else:
                label = variant.label
                print(f"loading {MODEL_NAME} as {label} ...", flush=True)
                try:
                    config = await generator.load(variant, base)
                except Exception as e:  # the other variants may still load: go on to them
                    failed_loads[label] = " ".join(str(e).split())
                    print(f"loading {label} failed: {failed_loads[label]}", flush=True)
                    continue
            configs[label] = {
                "instance_group": config.get("instance_group"),
                "dynamic_batching": config.get("dynamic_batching"),
                "max_batch_size": config.get("max_batch_size"),
                "parameters": config.get("parameters"),
            }
            for level in concurrency:
                point = await generator.measure(
                    label, level, requests=per_point, seconds=seconds,
                    warmup=max(warmup, 2 * level),
                )
                print(_row(point), flush=True)
                points.append(point)
    finally:
        await generator.close()
    return {
        "server": {"name": server.get("name"), "version": server.get("version")},
        "configs": configs,
        "failed_loads": failed_loads,
        "points": [asdict(point) for point in points],
    }


def check_targets(points: list[dict[str, Any]], candidates: int) -> dict[str, Any]:
    """Per precision: the GPU targets, met or not, with the figures they were judged on."""
    verdicts: dict[str, Any] = {}
    for precision in dict.fromkeys(point["precision"] for point in points):
        mine = [p for p in points if p["precision"] == precision and not p["failed"]]
        at = [p for p in mine if p["concurrency"] == TARGET_CONCURRENCY]
        p95 = at[0]["p95_ms"] if at and candidates == TARGET_CANDIDATES else None
        best = max((p["pairs_per_s"] for p in mine), default=None)
        verdicts[precision] = {
            f"p95_ms_at_concurrency_{TARGET_CONCURRENCY}": p95,
            "p95_met": p95 is not None and p95 <= TARGET_P95_MS,
            "best_pairs_per_s": best,
            "pairs_per_s_met": best is not None and best >= TARGET_PAIRS_PER_S,
        }
    return {
        "rule": (f"p95 <= {TARGET_P95_MS:g} ms per {TARGET_CANDIDATES}-candidate request at "
                 f"concurrency {TARGET_CONCURRENCY}; >= {TARGET_PAIRS_PER_S:,} pairs/s at the "
                 "best concurrency; points with failed requests do not count"),
        "by_precision": verdicts,
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _row(p: LoadPoint) -> str:
    return (f"| {p.precision} | {p.concurrency} | {p.requests} | {p.failed} | "
            f"{_fmt(p.pairs_per_s, 0)} | {_fmt(p.p50_ms)} | {_fmt(p.p95_ms)} | "
            f"{_fmt(p.p99_ms)} | {_fmt(p.server_queue_ms)} | {_fmt(p.server_compute_ms)} | "
            f"{_fmt(p.pairs_per_forward, 0)} | {p.client_cpu:.2f} |")


HEADER = ("| config | concurrency | requests | failed | pairs/s | p50 ms | p95 ms | p99 ms | "
          "server queue ms | server compute ms | pairs/forward | client CPU |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def utilisation(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per point: TFLOP/s on the pairs' real tokens and on the padded requests, and the real
    figure as a share of the GPU's datasheet peak for the point's precision."""
    a = data["arithmetic"]
    rows = []
    for point in data["points"]:
        real = point["pairs_per_s"] * a["flops_per_pair_real"] / 1e12
        padded = point["pairs_per_s"] * a["flops_per_pair_padded"] / 1e12
        peak = (a["peak_tflops"] or {}).get(point["precision"].split("+")[0])
        rows.append({"config": point["precision"], "concurrency": point["concurrency"],
                     "tflops_real": real, "tflops_padded": padded, "peak_tflops": peak,
                     "percent_of_peak": 100 * real / peak if peak else None})
    return rows


def arithmetic_report(data: dict[str, Any]) -> list[str]:
    a = data["arithmetic"]
    lines = [
        "", "Arithmetic: FLOPs per pair "
        f"{a['flops_per_pair_real'] / 1e9:.2f} G on its real tokens, "
        f"{a['flops_per_pair_padded'] / 1e9:.2f} G padded to its request's longest pair "
        f"({a['formula']}); peak: {a['peak_source']}.", "",
        "| config | concurrency | TFLOP/s, real tokens | TFLOP/s, padded requests | peak TFLOP/s "
        "| % of peak (real tokens) |",
        "|---|---|---|---|---|---|",
    ]
    for row in utilisation(data):
        lines.append(f"| {row['config']} | {row['concurrency']} | {_fmt(row['tflops_real'], 2)} | "
                     f"{_fmt(row['tflops_padded'], 2)} | {_fmt(row['peak_tflops'])} | "
                     f"{_fmt(row['percent_of_peak'], 2)} |")
    return lines


def report(data: dict[str, Any]) -> str:
    """The results as Markdown."""
    m, inputs = data["machine"], data["inputs"]
    gpu = "; ".join(f"{g['name']} ({g['memory']}, driver {g['driver']})" for g in m["gpus"])
    lines = [
        f"# Triton reranker under load ({data['name']})",
        "",
        f"- machine: {gpu or 'no GPU'}; {m['cpu']}, {m['cores']} cores; "
        f"load average {m['load_average']}",
        f"- software: Triton {data['server']['version']}, Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, numpy {m['numpy']}, "
        f"tritonclient {m['tritonclient']}; {m['date']}",
        f"- model: {data['model']}",
        f"- requests: {inputs['requests']} distinct, {inputs['candidates']} candidates each, "
        f"max_length {inputs['max_length']}, padded to {inputs['padded_tokens_mean']:.0f} tokens "
        f"on average (pairs: mean {inputs['pair_tokens_mean']:.0f}, p50 "
        f"{inputs['pair_tokens_p50']:.0f} tokens); {inputs['source']}",
        f"- load: {data['load']}",
        "",
        HEADER,
        *(_row(LoadPoint(**point)) for point in data["points"]),
    ]
    if "targets" in data:
        lines += ["", f"Targets: {data['targets']['rule']}.", ""]
        for precision, verdict in data["targets"]["by_precision"].items():
            p95 = verdict[f"p95_ms_at_concurrency_{TARGET_CONCURRENCY}"]
            lines.append(
                f"- {precision}: p95 at concurrency {TARGET_CONCURRENCY} {_fmt(p95)} ms "
                f"({'met' if verdict['p95_met'] else 'NOT met'}); best "
                f"{_fmt(verdict['best_pairs_per_s'], 0)} pairs/s "
                f"({'met' if verdict['pairs_per_s_met'] else 'NOT met'})"
            )
    lines += arithmetic_report(data)
    for precision, error in data["failed_loads"].items():
        lines.append(f"- loading {precision} failed: {error}")
    errors = [p for p in data["points"] if p["first_error"]]
    for p in errors:
        lines.append(f"- {p['precision']} c={p['concurrency']}: {p['failed']} failed, "
                     f"first: {p['first_error']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)

    prep = steps.add_parser("prepare", help="tokenize requests once (project environment)")
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--requests", type=int, default=48)
    prep.add_argument("--candidates", type=int, default=100)
    prep.add_argument("--max-length", type=int, default=256)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--queries", type=Path, default=DEFAULT_QUERIES)

    repo = steps.add_parser("repository", help="a model repository with one exported version")
    repo.add_argument("repository", type=Path)
    source = repo.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path)
    source.add_argument("--random-weights", type=Path, metavar="CONFIG_JSON")

    run = steps.add_parser("run", help="load a running server")
    run.add_argument("--url", default="127.0.0.1:8000")
    run.add_argument("--inputs", type=Path, required=True)
    run.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    run.add_argument("--precision", "--variants", dest="variants", nargs="+", type=Variant.parse,
                     metavar="PRECISION[+delay=US][+buckets=W,W,...]",
                     help="reload the model as each variant in turn (a load-time config "
                          "override): fp32 or fp16, optionally the batcher's queue delay and "
                          "the model's length buckets, e.g. fp16+delay=500+buckets=64,128,256")
    run.add_argument("--peak-tflops", type=json.loads, metavar='{"fp16": T, "fp32": T}',
                     help="the GPU's peaks when PEAK_TFLOPS does not list it")
    run.add_argument("--requests", type=int, help="measured requests per point (default: no limit)")
    run.add_argument("--seconds", type=float, default=8.0, help="time limit per point")
    run.add_argument("--warmup", type=int, default=5,
                     help="unmeasured requests per point (at least 2 x concurrency)")
    run.add_argument("--model", default="", help="what the server runs, for the report")
    run.add_argument("--targets", action="store_true", help="judge the GPU targets")
    run.add_argument("--out", type=Path, help="write <name>.json and <name>.md here")
    run.add_argument("--name", default=f"triton-load-{datetime.now(UTC):%Y-%m-%d}")
    args = parser.parse_args()

    if args.step == "prepare":
        meta = prepare(args.out, requests=args.requests, candidates=args.candidates,
                       max_length=args.max_length, seed=args.seed, queries=args.queries)
        size = sum(p.stat().st_size for p in args.out.iterdir())
        print(f"{args.out}: {meta['requests']} requests x {meta['candidates']} pairs, padded to "
              f"{meta['padded_tokens_mean']:.0f} tokens on average, {size / 1e6:.1f} MB")
        return
    if args.step == "repository":
        with tempfile.TemporaryDirectory() as scratch:
            checkpoint = args.checkpoint or random_checkpoint(
                args.random_weights, Path(scratch) / "random"
            )
            exported = build_repository(args.repository, checkpoint)
        print(f"exported {exported.mode} checkpoint as {exported.folder} "
              f"({exported.size_bytes / 1e6:.0f} MB)")
        return

    requests, inputs = load_requests(args.inputs)
    print(HEADER, flush=True)
    results = asyncio.run(run_load(
        args.url, requests, concurrency=args.concurrency, variants=args.variants,
        per_point=args.requests or sys.maxsize, seconds=args.seconds, warmup=args.warmup,
    ))
    described = machine()
    peaks = args.peak_tflops or peak_tflops([gpu["name"] for gpu in described["gpus"]])
    flops = request_flops(args.inputs, requests)
    data: dict[str, Any] = {
        "name": args.name, "machine": described, "inputs": inputs, "model": args.model,
        "load": (f"per point: warm-up max({args.warmup}, 2 x concurrency) requests, then up to "
                 f"{args.requests or 'unlimited'} requests or "
                 f"{args.seconds:g} s, whichever ends first; one tritonclient.http.aio client"),
        **results,
        "arithmetic": {
            "flops_per_pair_real": flops["real"], "flops_per_pair_padded": flops["padded"],
            "formula": "layers x (8LH^2 + 4LHI + 4L^2H), multiply-add = 2",
            "peak_tflops": peaks,
            "peak_source": ("--peak-tflops" if args.peak_tflops else
                            "NVIDIA datasheet, dense FP16 tensor / FP32" if peaks else
                            "unknown for this machine (no listed GPU): no percentage"),
        },
    }
    data["utilisation"] = utilisation(data)
    if args.targets:
        data["targets"] = check_targets(data["points"], inputs["candidates"])
    text = report(data)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}.json").write_text(json.dumps(data, indent=2) + "\n")
        (args.out / f"{args.name}.md").write_text(text)
        print(f"wrote {args.out / args.name}.json and .md")
    failed = sum(p["failed"] for p in data["points"])
    if data["failed_loads"] or failed or not data["points"]:
        sys.exit(f"incomplete: {len(data['failed_loads'])} variant(s) did not load, "
                 f"{failed} request(s) failed, {len(data['points'])} point(s) measured")


if __name__ == "__main__":
    main()
