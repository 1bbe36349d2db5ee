"""Length-bucketed batches: inputs of similar length share a batch, so little is padding.

A batch is padded to its own longest input; sorting by length before cutting batches keeps
short inputs from paying for long ones. Callers run batch by batch and write each result back
at its input index, so the order they return is the input order. Used for the ONNX reranker's
query-product pairs and the INT8 bi-encoder's product texts.
"""

from __future__ import annotations

from collections.abc import Sequence


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Input indices grouped into batches of at most ``batch_size``, longest first.

    Ties keep input order, so equal inputs always batch alike.

    >>> length_batches([3, 9, 4, 9, 1], 2)
    [[1, 3], [2, 0], [4]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more (got {batch_size})")
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Tokens the model computes for ``batches``: each batch's size times its longest length."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
