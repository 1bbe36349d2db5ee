"""The learned final stage: a linear ranker over per-stage scores and cheap features.

A linear model is the choice on purpose. With 50 to 100 judged queries a tree ensemble has
room to learn the queries instead of the catalog, while a linear model's weights can be read
and argued with. It is fitted as a pairwise logistic model (RankNet with a linear scorer): for
every two candidates of one query with different gains, the better one should score higher,
each pair weighted by the gain difference so mistakes near the top of the gain scale cost most.
The fit is a plain L-BFGS minimisation (scipy) of that convex loss.

Candidates nobody judged count as gain 0 when fitting, but a pair that involves one counts only
``unjudged_weight`` of a pair between two judged candidates. An unjudged product is unknown, not
irrelevant. Judged products were pooled from the systems that built the judgments, so at full
weight the ranker learns to look like the pool: it lifts judged-irrelevant products above
unjudged ones. On Icecat, whose pools are incomplete, that won 0.040 plain nDCG@10 over RRF
and lost 0.027 judged-only nDCG@10. Without those pairs at all it never learns to push
unjudged noise down, and plain nDCG@10 fell by 0.150. At `UNJUDGED_WEIGHT` it lost neither
number on either shared catalog (5-fold cross-validation on the dev queries,
``python -m bench.unjudged_weight``; README, "Relevance, measured").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from reranker.errors import CheckpointError

#: A ranker that reads the cross-encoder records in its card that it was fitted on the
#: scores' logits (`reranker.features.score_logits`): (feature, card key, value).
CROSS_ENCODER_SCALE = ("cross_encoder", "cross_encoder_scale", "logit")

Matrix = npt.NDArray[np.float64]

#: What `LinearRanker.save` writes; a file with another ``format`` is refused.
FORMAT = "shoprank-linear-ranker/1"

#: How much a pair with an unjudged candidate counts against a pair of two judged ones.
UNJUDGED_WEIGHT = 0.05


@dataclass(frozen=True)
class RankingGroup:
    """One query's candidates: a feature row and a gain per candidate.

    ``judged`` marks the candidates somebody judged; without it every candidate counts as judged.
    """

    features: Matrix
    gains: Sequence[float]
    judged: Sequence[bool] | None = None


@dataclass(frozen=True)
class LinearRanker:
    """``score = features @ weights``; weights apply to raw (unscaled) feature values.

    >>> ranker = LinearRanker(("bm25_relative", "vector_cosine"), (1.0, 2.0))
    >>> ranker.score(np.array([[1.0, 0.5], [0.2, 0.9]])).tolist()
    [2.0, 2.0]
    """

    feature_names: tuple[str, ...]
    weights: tuple[float, ...]
    #: Per-feature standard deviation on the training data: weight x scale compares features.
    scales: tuple[float, ...] = ()
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.feature_names) != len(self.weights):
            raise ValueError("one weight per feature")

    def score(self, features: Matrix) -> npt.NDArray[np.float64]:
        if features.shape[1] != len(self.weights):
            raise ValueError(
                f"expected {len(self.weights)} features {self.feature_names}, "
                f"got {features.shape[1]}"
            )
        return np.asarray(features @ np.asarray(self.weights), dtype=np.float64)

    def contributions(self, row: Sequence[float]) -> dict[str, float]:
        """Each feature's share of one candidate's score, largest magnitude first."""
        named = zip(self.feature_names, self.weights, row, strict=True)
        parts = {name: weight * value for name, weight, value in named}
        return dict(sorted(parts.items(), key=lambda item: -abs(item[1])))

    def importance(self) -> dict[str, float]:
        """Weight x training standard deviation: how far one typical step moves the score."""
        scales = self.scales or (1.0,) * len(self.weights)
        return {n: w * s for n, w, s in zip(self.feature_names, self.weights, scales, strict=True)}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "format": FORMAT,
            "features": list(self.feature_names),
            "weights": list(self.weights),
            "scales": list(self.scales),
            "card": self.card,
        }
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> LinearRanker:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read final-stage ranker {path}: {e}") from e
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a shoprank linear ranker (format {FORMAT})")
        card = dict(document.get("card", {}))
        if CROSS_ENCODER_SCALE[0] in document["features"] and card.get(
            CROSS_ENCODER_SCALE[1]
        ) != CROSS_ENCODER_SCALE[2]:
            raise CheckpointError(
                f"{path} was fitted on the cross-encoder's sigmoid scores by an older version; "
                "this version feeds the stage their logits: refit it with `shoprank tune ranker`"
            )
        return cls(
            tuple(document["features"]),
            tuple(float(w) for w in document["weights"]),
            tuple(float(s) for s in document.get("scales", [])),
            card,
        )


def _pairs(
    groups: Sequence[RankingGroup], unjudged_weight: float
) -> tuple[Matrix, npt.NDArray[np.int64], Matrix]:
    differences, labels, weights = [], [], []
    for group in groups:
        gains = np.asarray(group.gains, dtype=np.float64)
        better, worse = np.nonzero(gains[:, None] > gains[None, :])
        if not len(better):
            continue
        delta = group.features[better] - group.features[worse]
        weight = gains[better] - gains[worse]
        if group.judged is not None:
            judged = np.asarray(group.judged, dtype=bool)
            weight = np.where(judged[better] & judged[worse], weight, weight * unjudged_weight)
        # Both orientations, so the model has no intercept to lean on.
        differences += [delta, -delta]
        labels += [np.ones(len(delta), dtype=np.int64), np.zeros(len(delta), dtype=np.int64)]
        weights += [weight, weight]
    if not differences:
        raise ValueError("no query has two candidates with different gains to learn from")
    return np.vstack(differences), np.concatenate(labels), np.concatenate(weights)


def fit_linear_ranker(
    groups: Sequence[RankingGroup],
    feature_names: Sequence[str],
    *,
    regularization: float = 0.01,
    unjudged_weight: float = UNJUDGED_WEIGHT,
    prior: LinearRanker | None = None,
    card: dict[str, Any] | None = None,
) -> LinearRanker:
    """Fit pairwise logistic weights on standardised features, then express them on the raw
    scale.

    The objective is the gain-weighted mean pair loss plus ``regularization / 2`` times the
    squared distance of the standardised weights from ``prior``'s (from zero without one).
    Pairs with a candidate a group marks unjudged count ``unjudged_weight`` (see the module).
    A prior is how a ranker tuned on one shop adapts to another with few labels: with little
    data the weights stay near the prior's, with more they follow the new shop's pairs.
    """
    from scipy.optimize import minimize

    if prior is not None and tuple(prior.feature_names) != tuple(feature_names):
        raise ValueError(
            f"the prior ranker has features {prior.feature_names}, not {tuple(feature_names)}"
        )
    everything = np.vstack([group.features for group in groups])
    scale = everything.std(axis=0)
    scale[scale == 0] = 1.0
    x, y, w = _pairs(groups, unjudged_weight)
    x = x[y == 1] / scale  # one orientation suffices for the loss below
    w = w[y == 1] / w[y == 1].sum()
    centre = np.zeros(len(scale)) if prior is None else np.asarray(prior.weights) * scale

    def objective(v: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        margin = x @ v
        loss = float(w @ np.logaddexp(0.0, -margin))
        slope = -w / (1.0 + np.exp(margin))
        gap = v - centre
        return (loss + regularization / 2 * float(gap @ gap), x.T @ slope + regularization * gap)

    result = minimize(objective, centre.copy(), jac=True, method="L-BFGS-B")
    weights = result.x / scale
    return LinearRanker(
        tuple(feature_names),
        tuple(float(v) for v in weights),
        tuple(float(s) for s in scale),
        dict(card or {}),
    )
