"""What the Triton reranker model and its client agree on: one place for names, dtypes, shapes.

``tests/reranker/test_triton_contract.py`` checks this module against
``triton_models/shoprank_reranker/config.pbtxt`` (and its GPU variant), so the two cannot drift.

Tokenization happens in the client, and the model takes token ids (INT64), not strings. Two
reasons. Triton 2.51's Python backend fails on BYTES tensors with numpy 2, which the rest of
the project needs (see ``shared/notes/triton-local.md``). And a client that tokenizes knows each
pair's length, so it sends tensors padded only to the longest pair of its own request.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The model's folder name under the model repository.
MODEL_NAME = "shoprank_reranker"
#: ``max_batch_size`` in config.pbtxt: the most (query, product) pairs one request may carry,
#: and the most the dynamic batcher puts into one forward pass.
MAX_PAIRS = 1024
#: The longest tokenized pair the model accepts (BERT's position embeddings).
MAX_SEQUENCE_LENGTH = 512
#: A version folder holds the model code beside the tuned artifact it loads.
MODEL_FILE = "model.py"
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as config.pbtxt declares it: ``dims`` exclude the batch (pair) dimension."""

    name: str
    dtype: str  # Triton's name: "INT64", "FP32"
    dims: tuple[int, ...]


#: Token ids, attention mask and segment ids of each pair, padded to the request's longest pair.
INPUTS = (
    TensorSpec("input_ids", "INT64", (-1,)),
    TensorSpec("attention_mask", "INT64", (-1,)),
    TensorSpec("token_type_ids", "INT64", (-1,)),
)
#: One relevance score per pair, after the model's activation (a sigmoid: 0..1).
OUTPUT = TensorSpec("scores", "FP32", (1,))
