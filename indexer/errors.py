"""Exceptions raised by the indexer package. No vendor exception escapes it."""

from __future__ import annotations


class IndexerError(Exception):
    """Base class for every error the indexer raises."""


class CatalogError(IndexerError):
    """A catalog cannot be read, or (in strict mode) holds invalid lines."""


class IndexNotFoundError(IndexerError):
    """No complete index exists under the requested name."""


class StoreError(IndexerError):
    """A vector store could not serve or persist a request."""


class DimensionMismatchError(StoreError):
    """Vectors do not have the dimension the index was built with."""


class StoreUnavailableError(StoreError):
    """The store's server cannot be reached (the message names its URL)."""


class EncoderMismatchError(IndexerError):
    """The index was written by a different bi-encoder than the one asked to query or update it.

    Vectors of two encoders live in different spaces: comparing them returns confident nonsense.
    """
