"""``shoprank tune reranker-distill``: train the cross-encoder without judgments.

Registered on ``shoprank tune`` by `plugin.cli.tune`. Pseudo-queries come from each catalog
(`reranker.query_writer`), candidates and the teacher's scores from the search path
(`plugin.distill_data`), the training from `reranker.distilled_tuning`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from indexer.catalog import load_catalog
from indexer.errors import CatalogError, IndexerError
from indexer.schema import product_to_text
from plugin.cli.common import (
    build_settings,
    catalog_label,
    check_catalog_and_out,
    console,
    eval_index_name,
    fail,
    problems,
)
from plugin.cli.index import ensure_index
from plugin.components import PACKAGED_FINAL_RANKER, PACKAGED_RETRIEVAL_RANKER, build_pipeline
from plugin.distill_data import distillation_groups, fields_of
from plugin.errors import PluginError
from reranker.distillation import load_groups, save_groups
from reranker.distilled_tuning import train_distilled
from reranker.errors import RerankerError
from reranker.features import CROSS_ENCODER_FEATURE
from reranker.linear_ranker import LinearRanker
from reranker.listwise import ListwiseConfig
from reranker.query_writer import QUERY_KINDS, kinds_suffix, query_kinds, write_queries

OutOption = Annotated[Path, typer.Option("--out", "-o", help="New (or empty) output folder.")]


def tune_reranker_distill(
    catalog: Annotated[list[Path], typer.Option(
        "--catalog", "-c", help="JSONL or JSONL.gz catalog; repeat for several shops.")],
    out_dir: OutOption,
    pseudo_queries: Annotated[
        int, typer.Option("--pseudo-queries", min=10, max=200_000,
                          help="Pseudo-queries written from each catalog (no labels read).")
    ] = 6000,
    kinds_option: Annotated[
        str, typer.Option("--query-kinds", help="Comma-separated kinds of pseudo-query to "
                          f"write, of {', '.join(QUERY_KINDS)}.")
    ] = ",".join(QUERY_KINDS),
    teacher: Annotated[
        Path | None, typer.Option("--teacher", help="Final-stage ranker JSON whose scores the "
                                  "cross-encoder learns (default: the packaged retrieval-only "
                                  "one).")
    ] = None,
    work: Annotated[
        Path | None, typer.Option("--work", help="Folder for the training groups and the "
                                  "resumable checkpoint (default: OUT.work beside --out).")
    ] = None,
    lora: Annotated[
        bool, typer.Option("--lora/--full", help="LoRA on every linear layer (~3 MB), or "
                           "every weight (~90 MB).")
    ] = True,
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, max=100, help="Passes over the training groups.")
    ] = 1,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Stop after this many steps.")
    ] = None,
    group_size: Annotated[
        int, typer.Option("--group-size", min=2, max=64, help="Candidates beside the source "
                          "product in each training group.")
    ] = 8,
    batch_groups: Annotated[
        int, typer.Option("--batch-groups", min=1, max=256, help="Training groups per batch.")
    ] = 4,
    max_length: Annotated[
        int, typer.Option("--max-length", min=16, max=512, help="Tokens per query+product pair.")
    ] = 64,
    learning_rate: Annotated[
        float | None, typer.Option("--learning-rate", help="Default 3e-4 LoRA, 3e-5 --full.")
    ] = None,
    label_weight: Annotated[
        float, typer.Option("--label-weight", min=0.0, max=1.0, help="Share of each target on "
                            "the source product; the rest follows the teacher.")
    ] = 0.5,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the pseudo-queries, the groups and the "
                          "initial weights.")
    ] = 0,
    index: Annotated[list[str] | None, typer.Option(
        "--index", help="Index to retrieve candidates from, one per --catalog (default: eval's "
        "index for the catalog, built if missing).")] = None,
    stop_after: Annotated[
        int | None, typer.Option("--stop-after", min=1, help="End this call after that step "
                                 "(checkpointed); the same command later goes on from there.")
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="Train on cpu, or on cuda where a GPU is (the same "
                          "recipe; a GPU's arithmetic differs in the last digits).")
    ] = "cpu",
) -> None:
    """Train the cross-encoder without judgments: pseudo-queries written from each catalog,
    candidates from our own hybrid retrieval, the learned final stage as the teacher.

    Resumable: run the same command again (same --work) after a stop and it goes on from the
    last checkpoint. Writes a LoRA artifact (or a full checkpoint), model_card.json and
    README.md to --out; serve it with --reranker cross-encoder --checkpoint OUT.
    """
    for path in catalog:
        check_catalog_and_out(path)
    if index and len(index) != len(catalog):
        fail(f"give --index once per --catalog: got {len(catalog)} --catalog, "
              f"{len(index)} --index")
    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"--out {out_dir} exists and is not an empty folder; choose a new one")
    work = work or out_dir.with_name(out_dir.name + ".work")
    _check_device(device)
    try:
        kinds = query_kinds(kinds_option.split(","))
    except ValueError as e:
        fail(f"--query-kinds: {e}")
    try:
        ranker = LinearRanker.load(teacher or _default_teacher())
        config = ListwiseConfig(
            lora=lora, epochs=epochs, max_steps=max_steps, batch_groups=batch_groups,
            max_length=max_length, learning_rate=learning_rate, label_weight=label_weight,
            seed=seed,
        )
    except ValidationError as e:
        fail(problems(e))
    except RerankerError as e:
        fail(str(e))
    if CROSS_ENCODER_FEATURE in ranker.feature_names:
        fail("--teacher: that ranker reads cross-encoder scores; choose one without them")
    teacher_key = hashlib.sha256(
        (teacher or _default_teacher()).read_bytes()).hexdigest()[:8]
    texts: dict[str, str] = {}
    groups = []
    for number, path in enumerate(catalog):
        label = catalog_label(path)
        try:
            products = {product.id: product for product in load_catalog(path).products}
        except CatalogError as e:
            fail(str(e))
        clash = next((pid for pid in products if pid in texts), None)
        if clash is not None:
            fail(f"--catalog {path}: product id {clash!r} is also in an earlier catalog")
        texts.update((pid, product_to_text(product)) for pid, product in products.items())
        index_name = index[number] if index else eval_index_name(path)
        saved = work / (f"groups-{_slug(label)}-{_slug(index_name)}-q{pseudo_queries}-s{seed}"
                        f"-g{group_size}-t{teacher_key}{kinds_suffix(kinds)}.jsonl.gz")
        if saved.is_file():
            shop = load_groups(saved)
            console.print(f"{label}: {len(shop)} training groups from {saved}")
        else:
            settings = build_settings(index=index_name, reranker="none", final_ranker="none")
            ensure_index(settings, path)
            fields = fields_of(products)
            written = write_queries(list(fields.values()), pseudo_queries, seed=seed,
                                    kinds=kinds)
            console.print(f"{label}: {len(written)} pseudo-queries; the teacher scores "
                          "their hybrid candidates")
            try:
                pipeline = build_pipeline(settings)
                shop = list(distillation_groups(
                    pipeline, ranker, fields, written, catalog=label, seed=seed,
                    group_size=group_size,
                ))
            except (IndexerError, RerankerError, PluginError) as e:
                fail(str(e), code=1)
            save_groups(shop, saved)
        groups += shop
    console.print(f"training on {len(groups)} groups ({config.mode}, max length "
                  f"{config.max_length}); resumable from {work}")
    try:
        card = train_distilled(groups, texts, config, work, out_dir,
                               catalogs=[catalog_label(p) for p in catalog],
                               teacher=str((teacher or _default_teacher()).name),
                               stop_after=stop_after, device=device)
    except (RerankerError, PluginError) as e:
        fail(str(e), code=1)
    if card is None:
        console.print(f"stopped after step {stop_after}; run the same command to go on")
        return
    console.print(
        f"wrote {out_dir} ({card.artifact_bytes / 1e6:.2f} MB, {card.training_seconds:.0f} s); "
        f"held-out pseudo-query MRR {card.validation_before:.4f} untrained -> "
        f"{card.validation_best:.4f}, teacher {card.validation_retrieval:.4f}",
        highlight=False,
    )


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    if device != "cuda" and not device.startswith("cuda:"):
        fail(f"--device {device!r}: choose cpu or cuda (cuda:N for the N-th GPU)")
    import torch

    if not torch.cuda.is_available():
        fail(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")


def _default_teacher() -> Path:
    """The packaged final stage that reads no cross-encoder: its retrieval-only twin once the
    packaged one reads the cross-encoder."""
    twin = PACKAGED_RETRIEVAL_RANKER
    return twin if twin.is_file() else PACKAGED_FINAL_RANKER


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
