"""Distillation groups for the cross-encoder, built by the search path itself.

Each pseudo-query (`reranker.query_writer`) runs through hybrid retrieval exactly as a search
does (`plugin.final_stage_fitting.collect_candidates`); the learned final stage scores its
candidates (the teacher) and `reranker.distillation.make_group` turns them into a training group.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Mapping, Sequence

from indexer.schema import Product
from plugin.final_stage_fitting import collect_candidates
from plugin.pipeline import SearchPipeline
from reranker.distillation import DEFAULT_GROUP_SIZE, DistillGroup, make_group
from reranker.linear_ranker import LinearRanker
from reranker.pseudo_queries import PseudoQuery
from reranker.query_writer import ProductFields, product_fields

logger = logging.getLogger(__name__)

#: Queries encoded together ahead of their searches.
_WARM_BATCH = 256


def distillation_groups(
    pipeline: SearchPipeline,
    teacher: LinearRanker,
    fields: Mapping[str, ProductFields],
    queries: Sequence[PseudoQuery],
    *,
    catalog: str,
    seed: int = 0,
    group_size: int = DEFAULT_GROUP_SIZE,
    depth: int = 30,
    log_every: int = 500,
) -> Iterator[DistillGroup]:
    """One group per query that has enough candidates (see `make_group`).

    The teacher scores all of a query's retrieved candidates (its features are relative to
    them); groups draw their members from the top ``depth``.
    """
    rng = random.Random(seed)
    started = time.perf_counter()
    for done, query in enumerate(queries, start=1):
        if done % _WARM_BATCH == 1:  # batched query encoding: several times faster
            ahead = queries[done - 1:done - 1 + _WARM_BATCH]
            pipeline.encoder.warm_queries([q.text for q in ahead])
        collected = collect_candidates(pipeline, {"q": query.text}, rerank=False)["q"]
        if not collected.candidates:
            continue
        scores = teacher.score(collected.features(teacher.feature_names))
        kept = [(c.product_id, float(s)) for c, s in zip(collected.candidates, scores,
                                                          strict=True)
                if c.product_id in fields]
        top = kept[:depth]
        group = make_group(
            query.text, query.kind, catalog, fields[query.product_id],
            [fields[pid] for pid, _ in top], [score for _, score in top], rng,
            group_size=group_size,
        )
        if group is not None:
            yield group
        if done % log_every == 0:
            rate = done / (time.perf_counter() - started)
            logger.info("%s: %d/%d pseudo-queries scored by the teacher (%.1f/s)",
                        catalog, done, len(queries), rate)


def fields_of(products: Mapping[str, Product]) -> dict[str, ProductFields]:
    """The query writer's view of every product."""
    return {pid: product_fields(product) for pid, product in products.items()}
