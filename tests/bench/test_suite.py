"""The suite's naive baseline ranks with the shipped cross-encoder's own weights: its LoRA
adapter merged into a full checkpoint scores every pair as the adapter does, at the same length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.suite import merged_checkpoint
from plugin.components import PACKAGED_RERANKER
from reranker.cross_encoder import InProcessCrossEncoder, read_model_card

pytestmark = pytest.mark.slow

PAIRS = ("wireless earbuds", [
    "Bluetooth 5.3 wireless earbuds with charging case, 30 h playtime",
    "Stainless steel kitchen knife set, 6 pieces",
    "USB-C charging cable 2 m, braided",
])


def test_merged_shipped_cross_encoder_scores_like_the_adapter(tmp_path: Path) -> None:
    folder = merged_checkpoint(PACKAGED_RERANKER, tmp_path / "merged")

    merged = InProcessCrossEncoder(folder)
    adapter = InProcessCrossEncoder(PACKAGED_RERANKER)
    card, shipped = read_model_card(folder), read_model_card(PACKAGED_RERANKER)
    assert card is not None and shipped is not None
    assert card.mode == "full" and card.max_length == shipped.max_length == merged.max_length
    assert not (folder / "adapter_config.json").exists()
    np.testing.assert_allclose(merged.score(*PAIRS), adapter.score(*PAIRS), atol=1e-4)
