"""Fine-tune the bi-encoder on judged queries: LoRA by default, full fine-tuning on request.

The model starts from the packaged all-MiniLM-L6-v2 and is trained by the sentence-transformers
trainer with `MultipleNegativesRankingLoss` on (query, relevant product, mined hard negative)
triplets: each query is pulled towards its relevant product and away from its hard negative
and from every other product in the batch. This module prepares the data, picks the settings,
validates with our own nDCG and writes the artifact with its model card.

The artifact is what ``SHOPRANK_ENCODER_PATH`` points at (`indexer.encoder.BiEncoder` loads
both kinds). A new encoder writes vectors in a new space, so an index must be rebuilt with it
before it answers vector queries (`indexer.store.check_encoder` refuses otherwise)::

    candidates = mine_candidates(store, BiEncoder(), queries, depth=100)
    result = tune_bi_encoder(products, queries, qrels, candidates, Path("encoder-lora"))
    # SHOPRANK_ENCODER_PATH=encoder-lora shoprank reindex --catalog products.jsonl
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from indexer.errors import IndexerError
from indexer.model_files import packaged_model_path
from indexer.model_loading import (
    hf_transformer,
    load_sentence_transformer,
    prepare_offline_loading,
)
from indexer.schema import Product
from reranker.cross_encoder import TunedModelCard, portable_adapter_config
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
from reranker.training_data import hard_negatives, split_queries
from reranker.tuning_card import artifact_bytes, render_card
from reranker.tuning_card import write_model_card as write_tuned_model_card
from reranker.tuning_config import TuneConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = [
    "BiEncoderTuneConfig",
    "ProductTexts",
    "RetrievalValidation",
    "Triplet",
    "render_model_card",
    "triplets",
    "tune_bi_encoder",
    "write_model_card",
]

logger = logging.getLogger(__name__)


class BiEncoderTuneConfig(TuneConfig):
    """Settings of one bi-encoder tuning run (`TuneConfig` holds the shared ones).

    ``min_positive_grade``: judged products with at least this grade are positives (3 is ESCI's
    Exact). ``negatives_per_query``: mined hard negatives per training query; a query yields
    one triplet per positive or per negative, whichever is more. ``learning_rate=None`` picks
    5e-4 for LoRA and 2e-5 for full fine-tuning. ``validation_depth``: each validation query
    contributes its top mined candidates to the validation corpus, which every validation
    query then ranks by cosine similarity. ``batch_size``: in-batch negatives need two rows.
    """

    LORA_RATE: ClassVar[float] = 5e-4
    FULL_RATE: ClassVar[float] = 2e-5

    batch_size: int = Field(default=32, ge=2, le=1024)
    negatives_per_query: int = Field(default=3, ge=1, le=1000)
    validation_depth: int = Field(default=100, ge=1, le=10_000)
    max_seq_length: int = Field(default=128, ge=16, le=512)
    min_positive_grade: int = Field(default=3, ge=1)


@dataclass(frozen=True)
class Triplet:
    """One training row: a query, a relevant product and a hard negative (product ids)."""

    query_id: str
    positive: str
    negative: str


def triplets(
    query_ids: Sequence[str],
    qrels: Qrels,
    negatives: Mapping[str, Sequence[str]],
    min_positive_grade: int,
) -> list[Triplet]:
    """Pair each query's positives with its hard negatives, cycling the shorter list.

    A query without a positive or without a negative yields nothing.

    >>> triplets(["q"], {"q": {"a": 3, "b": 2}}, {"q": ["x", "y", "z"]}, 3)
    ... # doctest: +NORMALIZE_WHITESPACE
    [Triplet(query_id='q', positive='a', negative='x'),
     Triplet(query_id='q', positive='a', negative='y'),
     Triplet(query_id='q', positive='a', negative='z')]
    """
    rows: list[Triplet] = []
    for qid in query_ids:
        judged = qrels.get(qid, {})
        positives = sorted(pid for pid, grade in judged.items() if grade >= min_positive_grade)
        hard = list(negatives.get(qid, ()))
        if not positives or not hard:
            continue
        for i in range(max(len(positives), len(hard))):
            rows.append(Triplet(qid, positives[i % len(positives)], hard[i % len(hard)]))
    return rows


def tune_bi_encoder(
    products: Mapping[str, Product],
    queries: Mapping[str, str],
    qrels: Qrels,
    candidates: Mapping[str, Sequence[str]],
    out: Path,
    config: BiEncoderTuneConfig | None = None,
    *,
    catalog: str | None = None,
    progress: bool = False,
) -> TuneResult:
    """Train a bi-encoder and write it (with ``model_card.json`` and ``README.md``) to ``out``.

    Queries that have text, judgments and mined ``candidates`` are split into training and
    validation queries (`split_queries`). Training rows are `triplets`: a positive (grade >=
    ``min_positive_grade``) and a hard negative (`hard_negatives`: the best-ranked candidates
    not judged relevant). Batches never repeat a text (``NO_DUPLICATES``), so a query's other
    positives cannot appear as its in-batch negatives.

    After each epoch (or ``eval_steps``) the validation queries rank the validation corpus
    (their candidates' union) by cosine similarity, scored with `reranker.metrics` nDCG@k;
    the best checkpoint is kept and training stops early when it stops improving.

    ``out`` must be missing or empty. LoRA writes only the adapter (~0.3 MB); full fine-tuning
    writes a sentence-transformers folder. ``catalog`` names the data in the model card.
    """
    config = config or BiEncoderTuneConfig()
    check_out(out, label="--out ")
    usable = usable_queries(queries, qrels, candidates)
    train_ids, validation_ids = split_queries(usable, config.validation_fraction, config.seed)
    in_catalog = {q: [p for p in candidates[q] if p in products] for q in usable}
    negatives = hard_negatives(
        {q: in_catalog[q] for q in train_ids}, qrels, config.negatives_per_query
    )
    judged_in_catalog = {q: {p: g for p, g in qrels[q].items() if p in products} for q in usable}
    rows = triplets(train_ids, judged_in_catalog, negatives, config.min_positive_grade)
    if not rows:
        raise TuningError(
            f"no training triplet: no training query has a product of grade >= "
            f"{config.min_positive_grade} in the catalog and a mined negative"
        )
    texts = ProductTexts(products)
    corpus = list(dict.fromkeys(
        p for q in validation_ids for p in in_catalog[q][: config.validation_depth]
    ))
    validation = RetrievalValidation(
        {q: queries[q] for q in validation_ids}, corpus, texts,
        {q: qrels[q] for q in validation_ids}, k=config.k, gains=config.gains,
    )
    logger.info(
        "tuning the bi-encoder (%s): %d training queries, %d triplets; %d validation queries "
        "over %d products", config.mode, len(train_ids), len(rows), len(validation_ids),
        len(corpus),
    )
    retrieval_order = {q: in_catalog[q][: config.validation_depth] for q in validation_ids}
    try:
        return _train(
            config, rows, queries, texts, validation, out,
            train_queries=len(train_ids),
            validation_retrieval=validation.ndcg(retrieval_order),
            catalog=catalog,
            progress=progress,
        )
    except (OSError, ValueError, RuntimeError, IndexerError) as e:
        raise TuningError(f"tuning failed, {out} may be incomplete: {e}") from e


class RetrievalValidation(NdcgValidation):
    """Vector retrieval of held-out queries over a corpus, scored by our nDCG@k.

    Every query ranks the whole corpus by cosine similarity (exact search, like the local
    store); the mean nDCG@k comes from `reranker.metrics.evaluate_run`, so training selects
    on the metric ``shoprank eval`` reports.
    """

    def __init__(
        self,
        queries: Mapping[str, str],
        corpus: Sequence[str],
        texts: ProductTexts,
        qrels: Qrels,
        *,
        k: int = 10,
        gains: Gains | None = None,
        batch_size: int = 64,
    ) -> None:
        super().__init__(queries, texts, qrels, k=k, gains=gains, batch_size=batch_size)
        self.corpus = list(corpus)

    def rank(self, model: SentenceTransformer) -> dict[str, list[str]]:
        """Each query's corpus products, most similar first (ties keep corpus order)."""
        qids = list(self.queries)
        if not qids or not self.corpus:
            return {q: [] for q in qids}
        query_vectors = self._encode(model, [self.queries[q] for q in qids])
        product_vectors = self._encode(model, [self.texts[p] for p in self.corpus])
        scores = query_vectors @ product_vectors.T
        return {
            q: [self.corpus[i] for i in np.argsort(-row, kind="stable")]
            for q, row in zip(qids, scores, strict=True)
        }

    def _encode(self, model: SentenceTransformer, texts: list[str]) -> npt.NDArray[np.float32]:
        vectors = model.encode(
            texts, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    def score(self, model: SentenceTransformer) -> float:
        """Mean nDCG@k of the model's rankings."""
        return self.ndcg(self.rank(model))


def _train(
    config: BiEncoderTuneConfig,
    rows: Sequence[Triplet],
    queries: Mapping[str, str],
    texts: ProductTexts,
    validation: RetrievalValidation,
    out: Path,
    *,
    train_queries: int,
    validation_retrieval: float,
    catalog: str | None,
    progress: bool,
) -> TuneResult:
    prepare_offline_loading()
    from datasets import Dataset  # type: ignore[import-untyped]
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import set_seed

    # The LoRA matrices are initialised at random: seed before building them.
    set_seed(config.seed)
    model = load_sentence_transformer(packaged_model_path())
    model.max_seq_length = config.max_seq_length
    if config.lora:
        _add_lora(model, config)
    validation_before = validation.score(model)
    dataset = Dataset.from_dict({
        "anchor": [queries[row.query_id] for row in rows],
        "positive": [texts[row.positive] for row in rows],
        "negative": [texts[row.negative] for row in rows],
    })

    def build_trainer(arguments: dict[str, Any], callbacks: list[Any]) -> Any:
        args = SentenceTransformerTrainingArguments(
            **arguments, batch_sampler=BatchSamplers.NO_DUPLICATES
        )
        trainer = lora_restoring_trainer(SentenceTransformerTrainer, _peft_or_hf_model)
        return trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            loss=MultipleNegativesRankingLoss(model),
            evaluator=ndcg_evaluator(validation, "RetrievalNdcgEvaluator"),
            callbacks=callbacks,
        )

    trained = train(model, config, validation, out, build_trainer, progress=progress)
    result = tune_result(
        trained, out, config, validation,
        counts=(train_queries, len(validation.queries), len(rows), len(validation.corpus)),
        before=validation_before, retrieval=validation_retrieval,
        size=_save(model, out, config),
    )
    write_model_card(out, result, config, catalog=catalog)
    return result


def _add_lora(model: SentenceTransformer, config: BiEncoderTuneConfig) -> None:
    """Wrap the transformer in a peft LoRA model for feature extraction.

    sentence-transformers' own ``add_adapter`` refuses this peft version, so the wrapping is
    done on the underlying Hugging Face model.
    """
    from peft import TaskType, get_peft_model

    lora = lora_config(config, TaskType.FEATURE_EXTRACTION)
    transformer = hf_transformer(model)
    # The peft wrapper forwards like the model it wraps, which is all the module needs.
    transformer.model = get_peft_model(transformer.model, lora)  # type: ignore[assignment]


def _peft_or_hf_model(model: SentenceTransformer) -> Any:
    """The Hugging Face model inside (a peft model once LoRA wraps it)."""
    return hf_transformer(model).model


def _save(model: SentenceTransformer, out: Path, config: BiEncoderTuneConfig) -> int:
    """Write the artifact; returns its size in bytes (documentation files excluded)."""
    out.mkdir(parents=True, exist_ok=True)
    if config.lora:
        # The tokenizer, pooling and normalisation are the packaged model's: not copied.
        hf_transformer(model).model.save_pretrained(str(out))
        portable_adapter_config(out)
    else:
        model.save_pretrained(str(out))
    return artifact_bytes(out)


def write_model_card(
    out: Path, result: TuneResult, config: BiEncoderTuneConfig, *, catalog: str | None
) -> TunedModelCard:
    """Write ``model_card.json`` (the cross-encoder's format) and a ``README.md`` from it."""
    return write_tuned_model_card(
        out, result, config, max_length=config.max_seq_length, catalog=catalog,
        data={"train_triplets": result.train_pairs, "validation_corpus": result.validation_pairs},
        render=render_model_card,
    )


def render_model_card(card: TunedModelCard) -> str:
    """The human model card (Markdown) of a tuned bi-encoder."""
    how = ("a LoRA adapter over the packaged base weights (load it with shoprank)"
           if card.mode == "lora" else "a full sentence-transformers bi-encoder")
    return render_card(
        card,
        title="shoprank bi-encoder",
        how=how,
        about=[
            "Input: a query, or `indexer.schema.product_to_text(product)`, "
            f"at most {card.max_length} tokens; output: L2-normalised vectors.",
            "",
            "Use it with `SHOPRANK_ENCODER_PATH=<this folder>`, then rebuild the index "
            "(`shoprank reindex`): an index answers vector queries only from the encoder "
            "that wrote it.",
        ],
        validation=f"Held-out queries ({card.data['validation_queries']}) rank a corpus of "
        f"{card.data['validation_corpus']} products (their top "
        f"{card.config['validation_depth']} mined candidates each) by cosine similarity:",
        retrieval_label="mined candidates' order (the retrieval that mined them)",
        before_label="before training (packaged encoder)",
        data=f"{card.data['train_queries']} training queries, {card.data['train_triplets']} "
        "(query, positive, hard negative) triplets",
        loss="multiple-negatives ranking (in-batch negatives plus one mined hard negative "
        "per row)",
    )
