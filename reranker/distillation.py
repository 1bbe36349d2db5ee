"""Listwise training groups for the cross-encoder: a pseudo-query, its source product and
candidates from our own retrieval, with the learned final stage's scores as the teacher.

No human judgment is read. The source product is the one known positive; the other members
are drawn from the query's retrieved candidates, never a near-duplicate of the source (see
`reranker.query_writer.near_duplicate`). The target of a group mixes the two signals:

    target = label_weight * one_hot(source) + (1 - label_weight) * softmax(temperature * z)

where ``z`` is the teacher's score standardised over the query's candidates, and the source's
``z`` is raised to the best candidate's (it is known to answer its query). The student learns
the teacher's order among the candidates, where the final stage is already good, and the
label where the source is.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from reranker.query_writer import ProductFields, near_duplicate

#: One group is the source and this many other candidates.
DEFAULT_GROUP_SIZE = 8


@dataclass(frozen=True)
class DistillGroup:
    """One pseudo-query's training group; ``product_ids[0]`` is the source product."""

    query: str
    kind: str
    catalog: str
    product_ids: tuple[str, ...]
    #: The teacher's standardised score of each member (the source's raised, see above).
    teacher: tuple[float, ...]
    #: The teacher's own standardised score of the source; None when retrieval missed it.
    source_teacher: float | None = None

    def teacher_rank(self) -> int:
        """Where the teacher ranks the source among the group (1 = first; last when retrieval
        missed it; ties count against it)."""
        if self.source_teacher is None:
            return len(self.product_ids)
        return 1 + sum(z >= self.source_teacher for z in self.teacher[1:])

    def targets(self, label_weight: float, temperature: float) -> list[float]:
        """The group's target distribution (sums to 1), in member order.

        >>> group = DistillGroup("q", "title_span", "c", ("a", "b"), (1.0, 1.0))
        >>> group.targets(0.5, 1.0)
        [0.75, 0.25]
        """
        top = max(self.teacher)
        exps = [math.exp(temperature * (z - top)) for z in self.teacher]
        total = sum(exps)
        soft = [e / total for e in exps]
        return [label_weight * (i == 0) + (1 - label_weight) * s for i, s in enumerate(soft)]


def standardised(scores: Sequence[float]) -> list[float]:
    """Scores minus their mean, over their standard deviation (1 when they are all equal)."""
    mean = sum(scores) / len(scores)
    spread = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores)) or 1.0
    return [(s - mean) / spread for s in scores]


def make_group(
    query: str,
    kind: str,
    catalog: str,
    source: ProductFields,
    candidates: Sequence[ProductFields],
    teacher_scores: Sequence[float],
    rng: random.Random,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    head: int = 10,
) -> DistillGroup | None:
    """A group from one query's retrieved ``candidates`` (best first) and the teacher's score
    of each: the source, then up to ``group_size`` others, half from the top ``head`` (hard)
    and the rest from below, never a near-duplicate of the source. None when fewer than two
    others qualify.
    """
    z = standardised(list(teacher_scores)) if teacher_scores else []
    by_id = {c.id: score for c, score in zip(candidates, z, strict=True)}
    others = [i for i, c in enumerate(candidates) if not near_duplicate(source, c)]
    if len(others) < 2:
        return None
    hard = [i for i in others if i < head]
    easy = [i for i in others if i >= head]
    wanted_hard = min(len(hard), max(group_size // 2, group_size - len(easy)))
    picked = rng.sample(hard, wanted_hard)
    picked += rng.sample(easy, min(len(easy), group_size - wanted_hard))
    picked.sort()
    own = by_id.get(source.id)
    return DistillGroup(
        query, kind, catalog,
        (source.id, *(candidates[i].id for i in picked)),
        (max(z), *(z[i] for i in picked)),
        own,
    )


def save_groups(groups: Iterable[DistillGroup], path: Path) -> int:
    """Write groups as gzipped JSON lines; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for group in groups:
            out.write(json.dumps(asdict(group)) + "\n")
            count += 1
    return count


def load_groups(path: Path) -> list[DistillGroup]:
    """Read what `save_groups` wrote."""
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [_group(json.loads(line)) for line in lines if line.strip()]


def _group(row: Mapping[str, object]) -> DistillGroup:
    ids = row["product_ids"]
    teacher = row["teacher"]
    assert isinstance(ids, list) and isinstance(teacher, list)
    own = row.get("source_teacher")
    return DistillGroup(
        str(row["query"]), str(row["kind"]), str(row["catalog"]),
        tuple(str(i) for i in ids), tuple(float(t) for t in teacher),
        None if own is None else float(str(own)),
    )


def batches(
    groups: Sequence[DistillGroup], size: int, seed: int, epochs: int
) -> Iterator[list[DistillGroup]]:
    """Groups in a shuffled order per epoch (the same for a seed), ``size`` at a time; the
    last short batch of an epoch is dropped."""
    for epoch in range(epochs):
        order = list(range(len(groups)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        for start in range(0, len(order) - size + 1, size):
            yield [groups[i] for i in order[start:start + size]]
