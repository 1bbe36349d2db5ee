"""Exceptions raised by the plugin package."""

from __future__ import annotations


class PluginError(Exception):
    """Base class for every error the plugin raises."""


class RerankNotConfiguredError(PluginError):
    """A request asked for reranking but the server runs without a reranker."""


class UnknownProductError(PluginError):
    """The product asked about is not in the serving index."""
