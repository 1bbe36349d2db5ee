"""``shoprank tune reranker-distill``'s training step: hold out groups, train, write the
artifact and its model card.

The validation metric needs no judgment either: the mean reciprocal rank of each held-out
pseudo-query's source product among its group (``pseudo_mrr``), for the untrained model, the
teacher and the trained one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.model_files import MODEL_CARD
from reranker.cross_encoder import TunedModelCard, inner_model
from reranker.distillation import DistillGroup
from reranker.listwise import (
    ListwiseConfig,
    build_model,
    group_scores,
    save_artifact,
    train_listwise,
)
from reranker.tuning_card import BASE_MODEL, artifact_bytes, render_card, version

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

#: Held-out groups for the validation metric.
VALIDATION_GROUPS = 400
_LIBRARIES = ("torch", "transformers", "sentence-transformers", "peft")


def split_groups(
    groups: Sequence[DistillGroup], held: int, seed: int
) -> tuple[list[DistillGroup], list[DistillGroup]]:
    """(training, validation): ``held`` groups drawn at random, the same for a seed."""
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    held = min(held, len(groups) // 5)
    chosen = set(order[:held])
    return ([g for i, g in enumerate(groups) if i not in chosen],
            [g for i, g in enumerate(groups) if i in chosen])


def reciprocal_rank(scores: Sequence[float]) -> float:
    """1 / rank of the first member (the source) when the members are sorted by score;
    ties count against it.

    >>> reciprocal_rank([0.5, 0.9, 0.1])
    0.5
    """
    return 1.0 / (1 + sum(score >= scores[0] for score in scores[1:]))


def pseudo_mrr(model: CrossEncoder, groups: Sequence[DistillGroup],
               texts: Callable[[str], str], max_length: int) -> float:
    """The model's mean reciprocal rank of the source product over ``groups``."""
    import torch

    with torch.inference_mode():
        ranks = []
        for start in range(0, len(groups), 16):
            batch = groups[start:start + 16]
            for scores in group_scores(model, batch, texts, max_length):
                ranks.append(reciprocal_rank(scores.tolist()))
    return sum(ranks) / len(ranks) if ranks else 0.0


def train_distilled(
    groups: Sequence[DistillGroup],
    texts: Mapping[str, str],
    config: ListwiseConfig,
    work: Path,
    out: Path,
    *,
    catalogs: Sequence[str],
    teacher: str,
    stop_after: int | None = None,
    device: str = "cpu",
) -> TunedModelCard | None:
    """Train on all but `VALIDATION_GROUPS` groups (on ``device``) and write the artifact and
    its card.
    With ``stop_after`` (see `train_listwise`) a run that stops early writes nothing but its
    checkpoint, and returns None."""
    train, validation = split_groups(groups, VALIDATION_GROUPS, config.seed)
    text_of = texts.__getitem__
    from transformers import set_seed

    set_seed(config.seed)  # the untrained head is random: the same one for a seed
    untrained = build_model(config, device)
    inner_model(untrained).eval()
    before = pseudo_mrr(untrained, validation, text_of, config.max_length)
    del untrained
    teacher_mrr = sum(1 / g.teacher_rank() for g in validation) / max(len(validation), 1)
    model, result = train_listwise(train, text_of, config, work, stop_after=stop_after,
                                   data_key=data_key(train), device=device)
    if stop_after is not None and result.steps < _total_steps(len(train), config):
        return None
    best = pseudo_mrr(model, validation, text_of, config.max_length)
    save_artifact(model, out, config)
    kinds: dict[str, int] = {}
    for group in train:
        kinds[group.kind] = kinds.get(group.kind, 0) + 1
    card = TunedModelCard(
        base_model=BASE_MODEL,
        mode=config.mode,
        max_length=config.max_length,
        config={**config.model_dump(mode="json"),
                "learning_rate": config.resolved_learning_rate},
        data={
            "catalog": ", ".join(catalogs),
            "train_queries": len(train),
            "validation_queries": len(validation),
            "train_pairs": sum(len(g.product_ids) for g in train),
            "labels": "none: pseudo-queries written from the catalogs, distilled from the "
                      f"final stage {teacher}",
            "query_kinds": dict(sorted(kinds.items())),
            "pairs_per_second": round(result.pairs_per_second, 1),
            "device": _device_name(device),
            "steps": result.steps,
            "resumed_from_step": result.resumed_from,
        },
        training_seconds=round(result.seconds, 2),
        validation_metric="pseudo_mrr",
        validation_before=round(before, 4),
        validation_best=round(best, 4),
        validation_retrieval=round(teacher_mrr, 4),
        best_step=result.steps,
        artifact_bytes=artifact_bytes(out),
        versions={name: version(name) for name in _LIBRARIES},
        created_at=_now(),
    )
    (out / MODEL_CARD).write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_card(
        card, title="shoprank cross-encoder reranker (distilled, no judgments read directly)",
        how=f"LoRA (r={config.lora_r}) on every linear layer" if config.lora else "every weight",
        about=[f"Trained on pseudo-queries written from {', '.join(catalogs)}, with candidates "
               "from shoprank's hybrid retrieval and a learned final stage "
               f"({teacher}) as the teacher: listwise distillation mixed with the source "
               "product as the label. A teacher fitted on judgments passes them on at one "
               "remove.",
               "", "Reproduce: `bash bench/train_reranker.sh` (see the repository README)."],
        validation=f"Held-out pseudo-queries ({len(validation)} groups): mean reciprocal rank "
                   "of the source product among its training group.",
        retrieval_label="teacher (final stage, its own score of the source)",
        before_label="untrained (random head)",
        data=f"{len(train)} groups, {card.data['train_pairs']} pairs",
        loss=f"listwise cross-entropy against {config.label_weight} x source + "
             f"{1 - config.label_weight} x softmax(teacher z-scores / {config.temperature})",
    ), encoding="utf-8")
    return card


def data_key(groups: Sequence[DistillGroup]) -> str:
    """Names a training set: its size and a digest of its queries and members."""
    import hashlib

    digest = hashlib.sha256()
    for group in groups:
        digest.update(f"{group.query}\t{','.join(group.product_ids)}\n".encode())
    return f"{len(groups)} groups, sha256 {digest.hexdigest()[:16]}"


def _total_steps(groups: int, config: ListwiseConfig) -> int:
    total = groups // config.batch_groups * config.epochs
    return total if config.max_steps is None else min(total, config.max_steps)


def _device_name(device: str) -> str:
    """"cpu", or the GPU's name ("cuda: NVIDIA H100 80GB HBM3")."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")
