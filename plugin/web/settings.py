"""The search page's settings, read from the environment (prefix ``SHOPRANK_``) on first use."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WebSettings(BaseSettings):
    """Judgments for the engineer's view and for judging from the page.

    ``SHOPRANK_QRELS`` (TREC ``qid 0 docid grade``) and ``SHOPRANK_QUERIES``
    (``qid<TAB>query``) are the files `shoprank eval` and `shoprank tune` read with ``--qrels``
    and ``--queries``. With both set, results show their grades, each side of a compare shows
    its nDCG@10, and ratings given on the page are appended to them (admin key required).
    Either file may be missing at first: the first rating creates it.
    """

    model_config = SettingsConfigDict(env_prefix="SHOPRANK_", extra="ignore")

    qrels: Path | None = None
    queries: Path | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> WebSettings:
        if (self.qrels is None) != (self.queries is None):
            raise ValueError(
                "SHOPRANK_QRELS and SHOPRANK_QUERIES go together: a grade belongs to a query id, "
                "and the queries file names each id's query text"
            )
        return self
