"""What cross-encoder tuning (`reranker.tuning`) and bi-encoder tuning (`reranker.encoder_tuning`)
share: input checks, the product-text cache, nDCG validation, LoRA wrapping, and the training
loop with its best-checkpoint restore. Their settings are in `reranker.tuning_config`, their
model card in `reranker.tuning_card`.

Nothing here imports sentence-transformers, transformers or peft at import time.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from indexer.schema import Product, product_to_text
from reranker.cross_encoder import ADAPTER_WEIGHTS
from reranker.errors import TuningError
from reranker.metrics import Gains, Qrels, evaluate_run
from reranker.tuning_config import TuneConfig

if TYPE_CHECKING:
    from peft import LoraConfig, TaskType

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class TuneResult:
    """What a tuning run produced; the same numbers are in ``out/model_card.json``.

    ``validation_before`` scores the untrained model (random head), ``validation_retrieval``
    the retrieval order of the same candidates, ``validation_best`` the saved model.
    """

    out: Path
    mode: Literal["lora", "full"]
    train_queries: int
    validation_queries: int
    train_pairs: int
    validation_pairs: int
    training_seconds: float
    validation_metric: str
    validation_before: float
    validation_best: float
    validation_retrieval: float
    best_step: int | None
    steps: int
    losses: tuple[float, ...]
    artifact_bytes: int


def check_out(out: Path, *, label: str = "") -> None:
    """Refuse an ``out`` that exists and is not an empty folder (``label`` prefixes the name)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TuningError(f"{label}{out} exists and is not an empty folder; choose a new one")


def usable_queries(
    queries: Mapping[str, str], qrels: Qrels, candidates: Mapping[str, Sequence[str]]
) -> list[str]:
    """The judged queries that have text and mined candidates, sorted; at least two."""
    usable = sorted(q for q in qrels if q in queries and q in candidates and qrels[q])
    if len(usable) < 2:
        raise TuningError(
            f"need at least 2 queries with text, judgments and mined candidates (got {len(usable)})"
        )
    return usable


class ProductTexts:
    """`product_to_text` of each product, rendered once."""

    def __init__(self, products: Mapping[str, Product]) -> None:
        self._products = products
        self._cache: dict[str, str] = {}

    def __getitem__(self, product_id: str) -> str:
        text = self._cache.get(product_id)
        if text is None:
            text = self._cache[product_id] = product_to_text(self._products[product_id])
        return text


class NdcgValidation:
    """Held-out queries scored with our nDCG@k (`evaluate_run`), so that training selects on
    what ``shoprank eval`` reports. Subclasses rank with a model in `score`."""

    def __init__(
        self,
        queries: Mapping[str, str],
        texts: ProductTexts,
        qrels: Qrels,
        *,
        k: int = 10,
        gains: Gains | None = None,
        batch_size: int = 64,
    ) -> None:
        self.queries, self.texts, self.qrels = queries, texts, qrels
        self.k, self.gains, self.batch_size = k, gains, batch_size

    @property
    def metric(self) -> str:
        return f"ndcg@{self.k}"

    def ndcg(self, run: Mapping[str, Sequence[str]]) -> float:
        return evaluate_run(run, self.qrels, k=self.k, gains=self.gains).ndcg

    def score(self, model: Any) -> float:
        raise NotImplementedError


def ndcg_evaluator(validation: NdcgValidation, name: str) -> Any:
    """A sentence-transformers evaluator (class ``name``) returning ``{"ndcg@k": value}``.

    Built on demand so that importing this module does not import sentence-transformers.
    """
    from sentence_transformers.base.evaluation import BaseEvaluator

    class NdcgEvaluator(BaseEvaluator):
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.primary_metric = validation.metric

        def __call__(
            self, model: Any, output_path: str | None = None, epoch: float = -1,
            steps: int = -1,
        ) -> dict[str, float]:
            value = validation.score(model)
            logger.info("validation %s %.4f (epoch %s, step %s)", validation.metric, value,
                        epoch, steps)
            return {validation.metric: value}

    NdcgEvaluator.__name__ = NdcgEvaluator.__qualname__ = name
    return NdcgEvaluator()


class LoraSettings(Protocol):
    """The LoRA settings a config carries."""

    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: tuple[str, ...]


def lora_config(config: LoraSettings, task_type: TaskType) -> LoraConfig:
    """peft's `LoraConfig` for the config's LoRA settings."""
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
    )


def lora_restoring_trainer(trainer: type[Any], transformer_of: Callable[[Any], Any]) -> type[Any]:
    """A subclass of a sentence-transformers trainer, able to restore the best LoRA checkpoint.

    Its own restore rebuilds the whole model from the checkpoint folder, which fails for a
    hand-wrapped peft model (and is only logged); loading the adapter weights back does it.
    ``transformer_of(model)`` is the (possibly peft-wrapped) Hugging Face model inside.
    """
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    class _Trainer(trainer):  # type: ignore[misc]
        def _load_from_checkpoint(self, checkpoint_path: str, model: Any = None) -> None:
            transformer = transformer_of(self.model)
            if isinstance(transformer, PeftModel):
                weights = load_file(str(Path(checkpoint_path) / ADAPTER_WEIGHTS))
                set_peft_model_state_dict(transformer, weights)
            else:
                super()._load_from_checkpoint(checkpoint_path)

    return _Trainer


def training_arguments(
    config: TuneConfig, work: str, metric: str, progress: bool
) -> dict[str, Any]:
    """The training-argument keywords both trainers take: schedule, checkpoints, best model."""
    every: dict[str, Any] = (
        {"eval_strategy": "epoch", "save_strategy": "epoch"}
        if config.eval_steps is None
        else {"eval_strategy": "steps", "save_strategy": "steps",
              "eval_steps": config.eval_steps, "save_steps": config.eval_steps}
    )
    return {
        "output_dir": work,
        "num_train_epochs": config.epochs,
        "per_device_train_batch_size": config.batch_size,
        "learning_rate": config.resolved_learning_rate,
        # transformers 5 reads a float below 1 as a share of the training steps.
        "warmup_steps": config.warmup_ratio,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        "data_seed": config.seed,
        **every,
        "save_total_limit": 2,
        "save_only_model": True,
        "load_best_model_at_end": True,
        "metric_for_best_model": f"eval_{metric}",
        "greater_is_better": True,
        "logging_steps": config.logging_steps,
        "report_to": "none",
        "disable_tqdm": not progress,
    }


@dataclass(frozen=True)
class Trained:
    """What `train` reports of a finished run."""

    seconds: float
    validation_best: float
    best_step: int | None
    steps: int
    losses: tuple[float, ...]


def train(
    model: Any,
    config: TuneConfig,
    validation: NdcgValidation,
    out: Path,
    build_trainer: Callable[[dict[str, Any], list[Any]], Any],
    *,
    progress: bool,
) -> Trained:
    """Train in a checkpoint folder inside ``out`` (removed after) and check the best
    checkpoint was restored.

    ``build_trainer(arguments, callbacks)`` makes the trainer from the `training_arguments`
    keywords and the early-stopping callback.
    """
    from transformers import EarlyStoppingCallback, PrinterCallback

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".checkpoints-", dir=out) as work:
        trainer = build_trainer(
            training_arguments(config, work, validation.metric, progress),
            [EarlyStoppingCallback(config.early_stopping_patience)],
        )
        if not progress:
            trainer.remove_callback(PrinterCallback)
        started = time.perf_counter()
        trainer.train()
        training_seconds = time.perf_counter() - started
        state = trainer.state
    best = state.best_metric
    validation_best = validation.score(model)
    if best is not None and abs(validation_best - best) > 1e-6:
        raise TuningError(
            f"the best checkpoint ({validation.metric} {best:.4f}) was not restored "
            f"(the final model scores {validation_best:.4f})"
        )
    return Trained(
        seconds=training_seconds,
        validation_best=validation_best,
        best_step=step_of(state.best_model_checkpoint),
        steps=state.global_step,
        losses=tuple(float(entry["loss"]) for entry in state.log_history if "loss" in entry),
    )


def tune_result(
    trained: Trained,
    out: Path,
    config: TuneConfig,
    validation: NdcgValidation,
    *,
    counts: tuple[int, int, int, int],
    before: float,
    retrieval: float,
    size: int,
) -> TuneResult:
    """The `TuneResult` of a run; ``counts`` are training queries, validation queries,
    training pairs (or rows) and validation pairs (or corpus size)."""
    train_queries, validation_queries, train_pairs, validation_pairs = counts
    return TuneResult(
        out=out,
        mode=config.mode,
        train_queries=train_queries,
        validation_queries=validation_queries,
        train_pairs=train_pairs,
        validation_pairs=validation_pairs,
        training_seconds=trained.seconds,
        validation_metric=validation.metric,
        validation_before=before,
        validation_best=trained.validation_best,
        validation_retrieval=retrieval,
        best_step=trained.best_step,
        steps=trained.steps,
        losses=trained.losses,
        artifact_bytes=size,
    )


def step_of(checkpoint: str | None) -> int | None:
    """The step number of a ``checkpoint-<step>`` folder."""
    if checkpoint is None:
        return None
    return int(checkpoint.rsplit("-", 1)[-1])
