"""Sentence vectors: the array every encoder returns, and the pooling that makes one.

Vectors are L2-normalised float32 rows, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: An (n, dim) float32 array of unit vectors (one row per text), or one (dim,) vector.
Vectors = npt.NDArray[np.float32]


def mean_pool_normalize(tokens: np.ndarray, mask: np.ndarray) -> Vectors:
    """sentence-transformers' mean pooling then `torch.nn.functional.normalize` (eps 1e-12)."""
    weights = mask[:, :, None].astype(np.float32)
    summed = (tokens.astype(np.float32) * weights).sum(axis=1)
    means = summed / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return np.ascontiguousarray(means / np.maximum(norms, 1e-12), dtype=np.float32)
