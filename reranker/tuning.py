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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from indexer.model_loading import prepare_offline_loading
from indexer.schema import Product
from reranker.cross_encoder import (
    TunedModelCard,
    inner_model,
    packaged_cross_encoder,
    portable_adapter_config,
)
from reranker.errors import TuningError
from reranker.metrics import Gains, Qrels
from reranker.training import (
    NdcgValidation,
    ProductTexts,
    TuneResult,
    check_out,
    lora_config,
    lora_restoring_trainer,
    ndcg_evaluator,
    train,
    tune_result,
    usable_queries,
)
from reranker.training_data import (
    LabeledPair,
    hard_negatives,
    labeled_pairs,
    soft_targets,
    split_queries,
)
from reranker.tuning_card import BASE_MODEL, artifact_bytes, render_card
from reranker.tuning_card import write_model_card as write_tuned_model_card
from reranker.tuning_config import TuneConfig

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

__all__ = [
    "BASE_MODEL",
    "CrossEncoderTuneConfig",
    "TuneResult",
    "TuningError",
    "ValidationSet",
    "render_model_card",
    "tune_cross_encoder",
    "write_model_card",
]

logger = logging.getLogger(__name__)


class CrossEncoderTuneConfig(TuneConfig):
    """Settings of one cross-encoder tuning run (`TuneConfig` holds the shared ones).

    ``learning_rate=None`` picks 5e-4 for LoRA (adapters need a high rate) and 3e-5 for full
    fine-tuning. ``gains`` sets both the soft targets and the validation nDCG.
    """

    LORA_RATE: ClassVar[float] = 5e-4
    FULL_RATE: ClassVar[float] = 3e-5

    max_length: int = Field(default=128, ge=16, le=512)


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
    candidates are reranked and scored with our nDCG (`reranker.metrics`); the best
    checkpoint is kept and training stops early when it stops improving.

    ``out`` must be missing or empty. LoRA writes only the adapter and tokenizer (~1 MB);
    full fine-tuning writes a normal checkpoint. ``catalog`` names the data in the model card.
    """
    config = config or CrossEncoderTuneConfig()
    check_out(out)
    usable = usable_queries(queries, qrels, candidates)
    train_ids, validation_ids = split_queries(usable, config.validation_fraction, config.seed)
    try:
        targets = soft_targets({q: qrels[q] for q in train_ids}, config.gains)
    except ValueError as e:
        raise TuningError(f"training queries: {e}") from e
    negatives = hard_negatives(
        {q: candidates[q] for q in train_ids}, qrels, config.negatives_per_query
    )
    texts = ProductTexts(products)
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


class ValidationSet(NdcgValidation):
    """Held-out queries and their retrieved candidates, scored with our nDCG@k.

    `evaluate_run` computes the metric, so training selects on what ``shoprank eval`` reports;
    queries without a positive judgment are skipped there.
    """

    def __init__(
        self,
        queries: Mapping[str, str],
        candidates: Mapping[str, Sequence[str]],
        texts: ProductTexts,
        qrels: Qrels,
        *,
        k: int = 10,
        gains: Gains | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__(queries, texts, qrels, k=k, gains=gains, batch_size=batch_size)
        self.candidates = candidates

    @property
    def pairs(self) -> int:
        return sum(len(ids) for ids in self.candidates.values())

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


def _train(
    config: CrossEncoderTuneConfig,
    pairs: Sequence[LabeledPair],
    queries: Mapping[str, str],
    texts: ProductTexts,
    validation: ValidationSet,
    out: Path,
    *,
    train_queries: int,
    catalog: str | None,
    progress: bool,
) -> TuneResult:
    prepare_offline_loading()
    from datasets import Dataset  # type: ignore[import-untyped]
    from sentence_transformers.cross_encoder import (
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import set_seed

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

    def build_trainer(arguments: dict[str, Any], callbacks: list[Any]) -> Any:
        args = CrossEncoderTrainingArguments(
            **arguments, dataloader_pin_memory=model.device.type == "cuda"
        )
        return lora_restoring_trainer(CrossEncoderTrainer, lambda m: m[0].model)(
            model=model,
            args=args,
            train_dataset=dataset,
            loss=BinaryCrossEntropyLoss(model),
            evaluator=ndcg_evaluator(validation, "RerankingNdcgEvaluator"),
            callbacks=callbacks,
        )

    trained = train(model, config, validation, out, build_trainer, progress=progress)
    result = tune_result(
        trained, out, config, validation,
        counts=(train_queries, len(validation.candidates), len(pairs), validation.pairs),
        before=validation_before, retrieval=validation_retrieval,
        size=_save(model, out, config),
    )
    write_model_card(out, result, config, catalog=catalog)
    return result


def _add_lora(model: CrossEncoder, config: CrossEncoderTuneConfig) -> None:
    """Wrap the transformer in a peft LoRA model; SEQ_CLS keeps the new head trainable.

    sentence-transformers' own ``add_adapter`` refuses this peft version, so the wrapping is
    done here on the underlying ``AutoModelForSequenceClassification``.
    """
    from peft import TaskType, get_peft_model

    model[0].model = get_peft_model(inner_model(model), lora_config(config, TaskType.SEQ_CLS))


def _save(model: CrossEncoder, out: Path, config: CrossEncoderTuneConfig) -> int:
    """Write the artifact; returns its size in bytes (documentation files excluded)."""
    if config.lora:
        inner_model(model).save_pretrained(str(out))  # type: ignore[operator]
        model.tokenizer.save_pretrained(str(out))
        portable_adapter_config(out)
    else:
        model.save_pretrained(str(out))
    return artifact_bytes(out)


def write_model_card(
    out: Path, result: TuneResult, config: CrossEncoderTuneConfig, *, catalog: str | None
) -> TunedModelCard:
    """Write ``model_card.json`` and a ``README.md`` rendered from it."""
    return write_tuned_model_card(
        out, result, config, max_length=config.max_length, catalog=catalog,
        data={"train_pairs": result.train_pairs, "validation_pairs": result.validation_pairs},
        render=render_model_card,
    )


def render_model_card(card: TunedModelCard) -> str:
    """The human model card (Markdown) for a `TunedModelCard`."""
    how = ("a LoRA adapter over the packaged base weights (load it with shoprank)"
           if card.mode == "lora" else "a full sentence-transformers cross-encoder checkpoint")
    return render_card(
        card,
        title="shoprank cross-encoder reranker",
        how=how,
        about=["Input: the query and `indexer.schema.product_to_text(product)`, "
               f"at most {card.max_length} tokens."],
        validation=f"Held-out queries ({card.data['validation_queries']}), each query's top "
        f"{card.config['validation_depth']} retrieved candidates reranked:",
        retrieval_label="retrieval order (no reranker)",
        before_label="before training (random head)",
        data=f"{card.data['train_queries']} training queries, {card.data['train_pairs']} pairs",
        loss="binary cross-entropy on graded soft targets (gain / max gain)",
    )
