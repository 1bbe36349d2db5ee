"""The index contract: product schema, catalog loading, the bi-encoder and vector stores."""
