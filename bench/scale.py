"""Scale benchmark: the cost of each store at 10k, 100k and 1M products.

    python3 -m bench.scale --sizes 10000,100000,1000000 --stores local,opensearch \\
        --out bench/scale-2026-12-07.md --plot bench/scale-2026-12-07.png

The products are made from a real built index (`bench.scale_data`: real products repeated
with perturbed titles, prices and vectors), so no model runs. For each size and store it builds
the index in one process, then a fresh process that only opens the store measures open time,
RSS, vector (plain and filtered), BM25 and hybrid + final-stage latency (query encoding
excluded: query vectors are precomputed), recall@100 against the exact top 100 (brute force
over the same vectors), and upsert / delete cost with the time until another process sees the
change (`bench.scale_probe`). The OpenSearch store needs a running node at
``SHOPRANK_OPENSEARCH_URL`` (``scripts/opensearch start``); its RSS is the node's JVM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import cpu_model
from bench.scale_data import (
    PRODUCT_NOISE,
    QUERY_NOISE,
    Plan,
    QuerySet,
    Source,
    default_source,
    exact_top,
    write_vectors,
)
from bench.scale_probe import exact_supported
from indexer.settings import IndexerSettings

#: Today's LocalStore holds every product as a pydantic object and rebuilds its arrays on
#: each upsert; above this it is skipped unless --force says otherwise.
LEGACY_LOCAL_LIMIT = 200_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def child(role: str, store: str, location: str, work: Path, args: argparse.Namespace,
          ) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.scale_probe", role, "--store", store,
               "--location", location, "--work", str(work), "--source", str(args.source),
               "--seed", str(args.seed), "--upserts", str(args.upserts),
               "--batch", str(args.batch)]
    group = None
    if role == "serve" and store == "local" and args.memory_limit_gb:
        command, group = capped(command, args.memory_limit_gb)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if group is not None:
        group.rmdir()
    if done.returncode != 0:
        raise RuntimeError(f"{role} {store} {location} exited {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def capped(command: list[str], gigabytes: float) -> tuple[list[str], Path]:
    """``command`` run in a memory cgroup of that size (page cache included), started with the
    kernel's page cache dropped, so the index is read from disk as on a fresh start (root)."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    v1 = Path("/sys/fs/cgroup/memory")
    group = (v1 if v1.is_dir() else Path("/sys/fs/cgroup")) / f"shoprank-scale-{os.getpid()}"
    group.mkdir(exist_ok=True)
    limit = str(int(gigabytes * 2**30))
    (group / ("memory.limit_in_bytes" if v1.is_dir() else "memory.max")).write_text(limit)
    join = f'echo $$ > {group}/cgroup.procs && exec "$@"'
    return ["sh", "-c", join, "sh", *command], group


def opensearch_reachable() -> str | None:
    """None when the configured OpenSearch answers, else why not."""
    from indexer.opensearch_store import OpenSearchStore

    try:
        OpenSearchStore(IndexerSettings(), "scale-probe").client.info()
    except Exception as e:  # any failure means: skip it, and say why
        return f"OpenSearch at {IndexerSettings().opensearch_url} did not answer: {e}"
    return None


def opensearch_note() -> str:
    s = IndexerSettings()
    return (f"OpenSearch: one node at {s.opensearch_url} (`scripts/opensearch`), engine "
            f"{s.opensearch_engine}, HNSW m {s.opensearch_hnsw_m}, ef_construction "
            f"{s.opensearch_ef_construction}, ef_search {s.opensearch_ef_search}, "
            f"{s.opensearch_shards} shard(s), {s.opensearch_replicas} replica(s). Its RSS is "
            "the node's JVM (heap included; each row's heap in the JSON), its disk the "
            "index's primary store size, and its open time a fresh client's first count and "
            "search (the node itself already runs). Upserts return after the store's "
            "refresh.")


def drop_opensearch(location: str) -> None:
    from indexer.opensearch_store import OpenSearchStore

    OpenSearchStore(IndexerSettings(), location).drop()


def prepare(source: Source, queries: QuerySet, size: int, folder: Path,
            seed: int) -> dict[str, float]:
    """Write the plan, vectors, queries and exact top 100 of one size under ``folder``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    plan = Plan.make(source, size, seed)
    plan.save(folder / "plan.npz")
    write_vectors(source, plan, folder, seed, log)
    generated = time.perf_counter() - started
    queries.save(folder / "queries")
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    plain, filtered = exact_top(vectors, queries, plan)
    width = min(100, size)
    padded = np.full((len(filtered), width), -1, dtype=np.int64)
    for q, rows in enumerate(filtered):
        if rows is not None:
            padded[q, : len(rows)] = rows
    np.savez(folder / "truth.npz", plain=np.stack(plain), filtered=padded)
    return {"generate_s": generated, "truth_s": time.perf_counter() - started - generated}


def run_size(size: int, store: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    row: dict[str, Any] = {"size": size, "store": store, "load_avg": os.getloadavg()}
    location = str(folder / "local-index") if store == "local" else f"scale-{size}"
    log(f"[{store} {size:,}] building")
    row.update(child("build", store, location, folder, args))
    log(f"[{store} {size:,}] built in {row['build_s']:.1f} s; serving process")
    row.update(child("serve", store, location, folder, args))
    if store == "local":
        row["disk_bytes"] = folder_bytes(Path(location))
        if not args.keep:
            shutil.rmtree(location, ignore_errors=True)
    elif not args.keep:
        drop_opensearch(location)
    row["run_s"] = time.perf_counter() - started
    log(f"[{store} {size:,}] done in {row['run_s']:.0f} s")
    return row


def _pair(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    return f"{summary['p50']:.1f} / {summary['p95']:.1f}"


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _split(row: dict[str, Any]) -> str:
    """The anonymous / file-mapped parts of a local serving process's RSS."""
    if row.get("node_rss_mb") or row.get("rss_anon_mb") is None:
        return ""
    return f" ({row['rss_anon_mb']:,.0f} own + {row['rss_file_mb']:,.0f} mapped)"


def markdown(rows: list[dict[str, Any]], notes: list[str], meta: dict[str, Any]) -> str:
    lines = [
        f"# Scale benchmark, {meta['date']}",
        "",
        f"- Command: `{meta['command']}`",
        f"- Machine: {meta['machine']}; load average at the start "
        f"{meta['load_start'][0]:.2f} / {meta['load_start'][1]:.2f} / "
        f"{meta['load_start'][2]:.2f} (1 / 5 / 15 min), each row's 1-minute load in its table.",
        *([f"- **Memory capped:** each local serving process ran in a memory cgroup of "
           f"{meta['memory_limit_gb']:g} GiB (page cache included), started after the kernel's "
           "page cache was dropped, so it opened and searched the index from disk within that "
           "memory."] if meta.get("memory_limit_gb") else []),
        f"- Source: {meta['source']} ({meta['source_count']:,} real products with their "
        f"vectors and title vectors). Synthetic product i copies source product i % "
        f"{meta['source_count']:,} with a new id, a perturbed title (a word dropped, two "
        f"swapped or a suffix token added), a price x U(0.8, 1.25) and its vectors plus "
        f"Gaussian noise (sigma {PRODUCT_NOISE} per dimension), re-normalised.",
        f"- Queries: {meta['queries']} source titles cut to their first 2-4 words, each with "
        f"its product's vector plus noise (sigma {QUERY_NOISE}), re-normalised: no query "
        "vector is in the index. Filtered vector search: the product's brand and a price "
        "range of 0.5x-2x its price. **Query encoding is excluded** from every latency "
        "(vectors precomputed); hybrid + final = BM25 and vector top 100 fused (RRF), the "
        "products fetched, the packaged retrieval-only learned final stage (no cross-encoder)"
        " and the post-processors, through `plugin.pipeline.SearchPipeline`.",
        "- The serving processes cap BLAS threads as `shoprank serve` does "
        "(`SHOPRANK_BLAS_THREADS`, default 1). Each search runs alone, one after another, "
        "after 10 warm-up queries. Open = a fresh process constructs the store, counts it "
        "and answers one vector search. RSS = "
        "VmRSS of that serving process after all queries (for OpenSearch: the node's JVM, "
        "heap included); for the local store split into the process's own (anonymous) memory "
        "and the pages of memory-mapped index files it touched, which the kernel can drop and "
        "read again. Recall@100 = overlap of the store's top 100 with the exact top 100 "
        "by brute force over the same vectors (filtered: with the same filter); a store "
        "that takes `exact_below` is also compared with a second store over the same folder "
        "that searches exactly (`recall_at_100_vs_exact_store` in the JSON).",
        f"- Writes: {meta['upserts']} single-product upserts and deletes, one call each, and "
        f"one {meta['batch']}-product batch of each; visible = seconds from the call's return"
        " until a vector search in the same process / in another process over the same "
        "store (a second process opened beforehand) finds the change, and for the other "
        "process also from the call's start (what a writer that waits for the call sees; a"
        " slow call can hide the other process's catching up).",
        "",
    ]
    for store in dict.fromkeys(r["store"] for r in rows):
        lines += [f"## {store}", "", "| products | build s | disk MB | open s | RSS MB | "
                  "vector p50 / p95 ms | filtered vector p50 / p95 ms | BM25 p50 / p95 ms | "
                  "hybrid + final p50 / p95 ms | recall@100 (filtered) | upsert p50 / p95 ms "
                  "| visible here, max s | visible in other process p50 / max s | "
                  "visible in other process from the call's start p50 / max s | "
                  f"batch of {meta['batch']} upsert s | delete p50 / p95 ms | "
                  "load avg | run s |", "|" + " ---: |" * 18]
        for r in (r for r in rows if r["store"] == store):
            up = r["upsert"]
            lines.append(
                f"| {r['size']:,} | {r['build_s']:.1f} | {r['disk_bytes'] / 2**20:,.0f} | "
                f"{r['open_s']:.2f} | {_num(r.get('node_rss_mb') or r['rss_mb'], '{:,.0f}')}"
                f"{_split(r)} | {_pair(r['vector_ms'])} | {_pair(r['filtered_vector_ms'])} | "
                f"{_pair(r['bm25_ms'])} | {_pair(r['hybrid_final_ms'])} | "
                f"{r['recall_at_100']:.3f} ({_num(r['filtered_recall_at_100'], '{:.3f}')})"
                f" | {_pair(up['call_ms'])} | {_num(up['visible_here_s_max'], '{:.3f}')} | "
                f"{_num(up['visible_other_s_p50'], '{:.2f}')} / "
                f"{_num(up['visible_other_s_max'], '{:.2f}')} | "
                f"{_num(up.get('visible_other_from_start_s_p50'), '{:.2f}')} / "
                f"{_num(up.get('visible_other_from_start_s_max'), '{:.2f}')} | "
                f"{r['upsert_batch']['call_ms']['p50'] / 1000:.2f} | "
                f"{_pair(r['delete']['call_ms'])} | {r['load_avg'][0]:.1f} | "
                f"{r['run_s']:.0f} |"
            )
        stages = "; ".join(
            f"{r['size']:,}: retrieve {r['hybrid_final_stage_p50_ms']['retrieve']:.1f}, final "
            f"{r['hybrid_final_stage_p50_ms']['final']:.1f}"
            for r in rows if r["store"] == store and "hybrid_final_stage_p50_ms" in r
        )
        lines += ["", f"Hybrid + final, p50 of the pipeline's own stage timings (ms): {stages}."
                  " Build s is the store's replace_all, which includes making the synthetic "
                  "products (made as the store reads them; their vectors are made beforehand"
                  " and not counted); run s is the whole row.", ""]
        again = "; ".join(
            f"{r['size']:,}: vector {_pair(r['second_pass']['vector_ms'])}, filtered "
            f"{_pair(r['second_pass']['filtered_vector_ms'])}, hybrid + final "
            f"{_pair(r['second_pass']['hybrid_final_ms'])}"
            for r in rows if r["store"] == store and "second_pass" in r
        )
        if again:
            lines += [f"The same queries a second time, p50 / p95 ms (what they read is in "
                      f"memory now): {again}.", ""]
    lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> str | None:
    """Cost against N, log-x: p95 latencies, RSS and open time, a line per store."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written"
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for store in dict.fromkeys(r["store"] for r in rows):
        mine = [r for r in rows if r["store"] == store]
        sizes = [r["size"] for r in mine]
        for key, style in (("vector_ms", "o-"), ("filtered_vector_ms", "s:"),
                           ("hybrid_final_ms", "^--")):
            axes[0].plot(sizes, [r[key]["p95"] for r in mine], style,
                         label=f"{store} {key[:-3].replace('_', ' ')}")
        axes[1].plot(sizes, [r.get("node_rss_mb") or r["rss_mb"] for r in mine], "o-",
                     label=store)
        axes[2].plot(sizes, [r["open_s"] for r in mine], "o-", label=store)
    titles = ("p95 latency (ms), query encoding excluded", "RSS of the serving process (MB)",
              "open time (s)")
    for axis, title in zip(axes, titles, strict=True):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("products")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--stores", default="local,opensearch")
    parser.add_argument("--source", type=Path,
                        help="a built local index folder (default: the largest under "
                             "SHOPRANK_HOME/indexes)")
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--upserts", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/shoprank-scale"),
                        help="scratch folder for vectors and local indexes")
    parser.add_argument("--out", type=Path, required=True, help="markdown report")
    parser.add_argument("--plot", type=Path, help="PNG of cost against N")
    parser.add_argument("--keep", action="store_true", help="keep the indexes built")
    parser.add_argument("--max-opensearch", type=int, default=None, metavar="N",
                        help="run OpenSearch only up to N products (a 1 GB-heap node "
                             "took 184 s for 100k on two shared cores)")
    parser.add_argument("--memory-limit-gb", type=float, metavar="GB",
                        help="serve the local store in a memory cgroup of this size, page "
                             "cache included, after dropping the page cache (needs root)")
    parser.add_argument("--include", type=Path, metavar="JSON",
                        help="add another run's rows of a store not run here (its JSON "
                             "report) to the tables and the plot, named in the notes")
    parser.add_argument("--force", action="store_true",
                        help=f"run today's exact LocalStore above {LEGACY_LOCAL_LIMIT:,}")
    args = parser.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        parser.error(f"--sizes: comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 100:
        parser.error(f"--sizes: each at least 100, got {args.sizes!r}")
    stores = [s for s in args.stores.split(",") if s]
    if not stores or any(s not in ("local", "opensearch") for s in stores):
        parser.error(f"--stores: local and/or opensearch, got {args.stores!r}")
    if args.source is None:
        args.source = default_source(IndexerSettings().home)
        if args.source is None:
            parser.error("--source: no built index under SHOPRANK_HOME/indexes; give one")
    args.source = args.source.resolve()
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python3 -m bench.scale " + " ".join(argv if argv is not None
                                                        else sys.argv[1:]),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
        "load_start": os.getloadavg(), "queries": args.queries, "upserts": args.upserts,
        "batch": args.batch, "memory_limit_gb": args.memory_limit_gb,
    }
    source = Source.load(args.source)
    meta |= {"source": source.name, "source_count": len(source)}
    queries = QuerySet.make(source, args.queries, args.seed)
    meta["queries"] = len(queries.texts)
    notes = [] if exact_supported() else [
        "Today's LocalStore searches exactly (no `exact_below`): its recall is 1.0 by "
        "construction, which the column confirms."]
    if "opensearch" in stores and (why := opensearch_reachable()) is not None:
        notes.append(f"OpenSearch skipped: {why}")
        stores.remove("opensearch")
    if "opensearch" in stores:
        notes.append(opensearch_note())
    rows: list[dict[str, Any]] = []
    for size in sizes:
        folder = args.work / f"n{size}"
        log(f"[{size:,}] generating products and vectors, exact top 100")
        prepared = prepare(source, queries, size, folder, args.seed)
        for store in stores:
            if store == "local" and size > LEGACY_LOCAL_LIMIT and not exact_supported() \
                    and not args.force:
                notes.append(f"local at {size:,} skipped: today's LocalStore keeps every "
                             "product as a pydantic object and rebuilds its arrays on each "
                             "upsert (--force runs it)")
                continue
            if store == "opensearch" and args.max_opensearch is not None \
                    and size > args.max_opensearch:
                notes.append(f"opensearch at {size:,} skipped: above --max-opensearch "
                             f"{args.max_opensearch:,}")
                continue
            rows.append(run_size(size, store, folder, args) | prepared)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.include is not None:
        other = json.loads(args.include.read_text(encoding="utf-8"))
        added = [row for row in other["rows"] if row["store"] not in stores]
        rows += added
        meta_other = other["meta"]
        notes.append(f"The {', '.join(sorted({r['store'] for r in added}))} rows come from "
                     f"`{args.include.name}` ({meta_other['date']}, `{meta_other['command']}`, "
                     f"load average {meta_other['load_start'][0]:.1f} at its start): the same "
                     "synthetic catalog and queries, that store's code unchanged since.")
    if args.plot is not None and rows and (skipped := plot(rows, args.plot)) is not None:
        notes.append(skipped)
    args.out.write_text(markdown(rows, notes, meta), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                         "notes": notes}, indent=1))
    log(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
