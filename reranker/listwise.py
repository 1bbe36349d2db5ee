"""Train the cross-encoder on listwise distillation groups (`reranker.distillation`).

A plain torch loop rather than a library trainer, so that a run on two CPU cores can be
stopped at any time and resumed exactly: every ``checkpoint_steps`` the adapter (or the
whole model), the optimizer, the schedule and the step are written to ``work/checkpoint.pt``,
and a later call with the same ``work`` folder picks up from there. The data order depends
on the seed alone, so a resumed run sees the batches an uninterrupted one would.

The loss is the cross-entropy between each group's target distribution and the softmax of
the model's scores over the group (a listwise KL up to a constant). The scores it learns
are only compared within a query, which is all the rerank stage and the final stage's
``cross_encoder`` feature need.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from indexer.model_loading import prepare_offline_loading
from reranker.cross_encoder import inner_model, packaged_cross_encoder, portable_adapter_config
from reranker.distillation import DistillGroup, batches
from reranker.errors import TuningError
from reranker.training import lora_config
from reranker.tuning_config import ByMode

if TYPE_CHECKING:
    import torch
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

#: Every linear layer of a BERT block: attention query/key/value/output and the feed-forward
#: pair (all named ``dense`` but the first three), and the pooler.
ALL_LINEAR = ("query", "key", "value", "dense")
CHECKPOINT = "checkpoint.pt"


class ListwiseConfig(ByMode, BaseModel):
    """Settings of a listwise run; every field is recorded in the model card."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    LORA_RATE: ClassVar[float] = 3e-4
    FULL_RATE: ClassVar[float] = 3e-5

    lora: bool = True
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    lora_target_modules: tuple[str, ...] = ALL_LINEAR
    epochs: int = Field(default=1, ge=1, le=100)
    #: Groups per optimizer step (pairs per step: this x the group's members).
    batch_groups: int = Field(default=4, ge=1, le=256)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    max_length: int = Field(default=64, ge=16, le=512)
    label_weight: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=1.0, gt=0)
    checkpoint_steps: int = Field(default=100, ge=1)
    #: Stop after this many optimizer steps (None: every batch of every epoch).
    max_steps: int | None = Field(default=None, ge=1)
    seed: int = 0
    #: A LoRA artifact to go on training from (its adapter and head); None: a new adapter
    #: on the packaged weights with a random head.
    init: str | None = None
    #: ``listwise``: cross-entropy against each group's target distribution. ``mse``: the
    #: squared error against the teacher's own scores (a student matching a cross-encoder
    #: teacher's logits, so the final stage fitted on the teacher reads it unchanged).
    loss: Literal["listwise", "mse"] = "listwise"
    #: Keep the word embeddings as they are (a student that shares them with the packaged base).
    freeze_embeddings: bool = False


@dataclass(frozen=True)
class ListwiseResult:
    """What a finished run reports (also in the model card)."""

    steps: int
    pairs: int
    seconds: float
    pairs_per_second: float
    losses: tuple[float, ...]
    resumed_from: int


class _Progress:
    """One line, rewritten: step, pairs/s and the time left, like a progress bar; also
    logged every ``log_every`` steps so a background run's log shows it."""

    def __init__(self, total: int, start: int, log_every: int = 20) -> None:
        self.total, self.start, self.log_every = total, start, log_every
        self.started = time.perf_counter()
        self.pairs = 0

    def update(self, step: int, pairs: int, loss: float) -> None:
        self.pairs += pairs
        elapsed = time.perf_counter() - self.started
        rate = self.pairs / elapsed if elapsed > 0 else 0.0
        done = step - self.start
        left = (self.total - step) * elapsed / done if done else 0.0
        line = (f"step {step}/{self.total} | loss {loss:.4f} | {rate:.1f} pairs/s | "
                f"ETA {_minutes(left)}")
        if sys.stderr.isatty():
            print("\r" + line, end="", file=sys.stderr, flush=True)
        if step % self.log_every == 0 or step == self.total:
            logger.info(line)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def build_model(config: ListwiseConfig, device: str = "cpu") -> CrossEncoder:
    """The packaged MiniLM as a cross-encoder with a one-logit head, LoRA-wrapped on request;
    with ``config.init``, that artifact's adapter and head, trainable. On ``device`` ("cpu",
    or "cuda" where a GPU is)."""
    if config.init is not None and not config.lora:
        from sentence_transformers import CrossEncoder

        model: CrossEncoder = CrossEncoder(config.init, max_length=config.max_length,
                                           device=device, local_files_only=True)
        _freeze_embeddings(model, config)
        return model
    model = packaged_cross_encoder(max_length=config.max_length, device=device)
    _freeze_embeddings(model, config)
    if config.init is not None:
        from peft import PeftModel

        model[0].model = PeftModel.from_pretrained(inner_model(model), config.init,
                                                   is_trainable=True)
    elif config.lora:
        from peft import TaskType, get_peft_model

        model[0].model = get_peft_model(inner_model(model), lora_config(config, TaskType.SEQ_CLS))
    return model


def _freeze_embeddings(model: CrossEncoder, config: ListwiseConfig) -> None:
    if config.freeze_embeddings:
        for name, parameter in inner_model(model).named_parameters():
            if ".embeddings." in name:
                parameter.requires_grad_(False)


def group_loss(
    group: DistillGroup, scores: torch.Tensor, config: ListwiseConfig
) -> torch.Tensor:
    """One group's loss (see `ListwiseConfig.loss`)."""
    import torch

    if config.loss == "mse":
        teacher = torch.tensor(group.teacher, dtype=scores.dtype, device=scores.device)
        return torch.mean((scores - teacher) ** 2)
    targets = torch.tensor(group.targets(config.label_weight, config.temperature),
                           dtype=scores.dtype, device=scores.device)
    return -(targets * torch.log_softmax(scores, dim=0)).sum()


def group_scores(
    model: CrossEncoder, groups: Sequence[DistillGroup], texts: Callable[[str], str],
    max_length: int,
) -> list[torch.Tensor]:
    """The model's score of each member of each group (with gradients), one tensor a group."""
    import torch

    pairs = [(g.query, texts(pid)) for g in groups for pid in g.product_ids]
    network = inner_model(model)
    features = model.tokenizer(
        [q for q, _ in pairs], [t for _, t in pairs], padding=True, truncation=True,
        max_length=max_length, return_tensors="pt",
    ).to(network.device)
    logits = network(**features).logits.view(-1)
    return list(torch.split(logits, [len(g.product_ids) for g in groups]))


def train_listwise(
    groups: Sequence[DistillGroup],
    texts: Callable[[str], str],
    config: ListwiseConfig,
    work: Path,
    *,
    stop_after: int | None = None,
    data_key: str = "",
    device: str = "cpu",
) -> tuple[CrossEncoder, ListwiseResult]:
    """Train on ``groups`` (product text by id from ``texts``), checkpointing into ``work``
    and resuming from a checkpoint there. Returns the trained model and what the run did.

    ``stop_after`` ends this call after that step (checkpointed), as a stopped run would;
    a later call with the same settings goes on from there (a call already past it trains
    nothing). ``data_key`` names the training data: a checkpoint of other data is refused.
    Seconds and pairs in the result count every call of the run. A checkpoint written on
    one ``device`` resumes on another.
    """
    prepare_offline_loading()
    import torch
    from transformers import get_linear_schedule_with_warmup, set_seed

    if not groups:
        raise TuningError("no training group")
    per_epoch = len(groups) // config.batch_groups
    total = per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    if total < 1:
        raise TuningError(f"{len(groups)} groups make no batch of {config.batch_groups}")
    set_seed(config.seed)
    model = build_model(config, device)
    network = inner_model(model)
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.resolved_learning_rate,
                                  weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(  # type: ignore[no-untyped-call]
        optimizer, math.ceil(config.warmup_ratio * total), total
    )
    work.mkdir(parents=True, exist_ok=True)
    resumed = _resume(work / CHECKPOINT, network, optimizer, schedule, config, data_key)
    start, losses = resumed.step, resumed.losses
    network.train()
    progress = _Progress(total, start)
    started = time.perf_counter()
    step = start
    if stop_after is not None and start >= stop_after:
        total = start  # already past the stop: nothing to train in this call
    for step, batch in enumerate(
        batches(groups, config.batch_groups, config.seed, config.epochs), start=1
    ):
        if step > total:
            step = total
            break
        if step <= start:
            continue
        scores = group_scores(model, batch, texts, config.max_length)
        loss = torch.stack([
            group_loss(g, s, config) for g, s in zip(batch, scores, strict=True)
        ]).mean()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        progress.update(step, sum(len(g.product_ids) for g in batch), losses[-1])
        stopping = stop_after is not None and step >= stop_after
        if step % config.checkpoint_steps == 0 or step == total or stopping:
            _save_checkpoint(work / CHECKPOINT, network, optimizer, schedule, config, {
                "step": step, "losses": losses, "data_key": data_key,
                "seconds": resumed.seconds + time.perf_counter() - started,
                "pairs": resumed.pairs + progress.pairs,
            })
        if stopping:
            break
    network.eval()
    seconds = resumed.seconds + time.perf_counter() - started
    pairs = resumed.pairs + progress.pairs
    if sys.stderr.isatty():
        print(file=sys.stderr)
    result = ListwiseResult(
        steps=min(step, total), pairs=pairs, seconds=seconds,
        pairs_per_second=pairs / seconds if seconds > 0 else 0.0,
        losses=tuple(losses), resumed_from=start,
    )
    return model, result


def _state(network: torch.nn.Module, lora: bool) -> dict[str, Any]:
    if lora:
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(network))
    return dict(network.state_dict())


def _save_checkpoint(
    path: Path, network: torch.nn.Module, optimizer: Any, schedule: Any,
    config: ListwiseConfig, progress: Mapping[str, Any],
) -> None:
    import torch

    partial = path.with_suffix(".partial")
    torch.save({
        **progress, "config": config.model_dump(mode="json"),
        "model": _state(network, config.lora), "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(), "python_random": random.getstate(),
        "torch_random": torch.get_rng_state(),
        # Dropout on a GPU draws from the GPU's generators.
        "cuda_random": (torch.cuda.get_rng_state_all()
                        if next(network.parameters()).is_cuda else None),
    }, partial)
    partial.replace(path)  # a run killed mid-write keeps the previous checkpoint


@dataclass(frozen=True)
class _Resumed:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    pairs: int = 0


def _resume(
    path: Path, network: torch.nn.Module, optimizer: Any, schedule: Any,
    config: ListwiseConfig, data_key: str,
) -> _Resumed:
    """Load a checkpoint of the same settings and data, if there is one."""
    import torch

    if not path.is_file():
        return _Resumed()
    saved = torch.load(path, weights_only=False, map_location="cpu")
    if saved["config"] != config.model_dump(mode="json"):
        raise TuningError(
            f"{path} was written with other settings; resume with the same ones, or use a "
            "new folder"
        )
    if saved.get("data_key", data_key) != data_key:
        raise TuningError(
            f"{path} was written for other training data ({saved['data_key']!r}, now "
            f"{data_key!r}); use a new folder"
        )
    if config.lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(network, saved["model"])
    else:
        network.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    random.setstate(saved["python_random"])
    torch.set_rng_state(saved["torch_random"])
    cuda_random = saved.get("cuda_random")
    if (cuda_random is not None and next(network.parameters()).is_cuda
            and len(cuda_random) == torch.cuda.device_count()):
        torch.cuda.set_rng_state_all(cuda_random)
    logger.info("resuming from step %d (%s)", saved["step"], path)
    return _Resumed(int(saved["step"]), list(saved["losses"]), float(saved.get("seconds", 0.0)),
                    int(saved.get("pairs", 0)))


def save_artifact(model: CrossEncoder, out: Path, config: ListwiseConfig) -> None:
    """Write the model where `InProcessCrossEncoder` loads it: a LoRA adapter (+ tokenizer)
    naming the packaged base, or a full checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    if config.lora:
        inner_model(model).save_pretrained(str(out))  # type: ignore[operator]
        model.tokenizer.save_pretrained(str(out))
        portable_adapter_config(out)
    else:
        model.save_pretrained(str(out))

