"""A repeated query is answered from the encoder's cache, not encoded again."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.encoder import BiEncoder

pytestmark = pytest.mark.slow


def test_repeated_queries_are_encoded_once_and_the_cache_stays_bounded() -> None:
    encoder = BiEncoder(query_cache_size=2)
    first = encoder.encode_query("usb c charger")
    again = encoder.encode_query("  usb c   charger ")  # the same query, other spacing
    assert again is first and encoder.cache_misses == 1
    encoder.encode_query("kitchen towels")
    encoder.encode_query("red running shoes")  # a third query: the oldest one leaves
    assert encoder.cache_misses == 3
    assert np.array_equal(encoder.encode_query("usb c charger"), first)
    assert encoder.cache_misses == 4  # encoded again, to the same vector
