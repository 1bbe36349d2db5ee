"""Text analysis for lexical search: the one definition both stores follow.

The chain is: lowercase -> split on ``\\w+`` (Unicode) -> drop stop words -> Snowball English
stemming. The local store runs it in Python; the OpenSearch store declares the same chain as an
index analyzer (``opensearch_analysis_settings``), so BM25 sees the same terms in both.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import Stemmer

#: Lucene's English stop set (``_english_``), spelled out so both stores share one list.
STOPWORDS: tuple[str, ...] = (
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is",
    "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with",
)
TOKEN_PATTERN = r"\w+"
ANALYZER_NAME = "shoprank_text"

_TOKEN = re.compile(TOKEN_PATTERN)
_STOP = frozenset(STOPWORDS)


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def analyze(text: str) -> list[str]:
    """Terms of a text, in order, as BM25 indexes them.

    >>> analyze("The Running Shoes for women")
    ['run', 'shoe', 'women']
    """
    tokens = [token for token in _TOKEN.findall(text.lower()) if token not in _STOP]
    stems: list[str] = _stemmer().stemWords(tokens)
    return stems


def opensearch_analysis_settings() -> dict[str, Any]:
    """The same chain as an OpenSearch analyzer definition (index ``settings.analysis``)."""
    return {
        "tokenizer": {
            "shoprank_words": {
                "type": "pattern",
                "pattern": TOKEN_PATTERN,
                "group": 0,
                "flags": "UNICODE_CHARACTER_CLASS",
            }
        },
        "filter": {
            "shoprank_stop": {"type": "stop", "stopwords": list(STOPWORDS)},
            "shoprank_stem": {"type": "snowball", "language": "English"},
        },
        "analyzer": {
            ANALYZER_NAME: {
                "type": "custom",
                "tokenizer": "shoprank_words",
                "filter": ["lowercase", "shoprank_stop", "shoprank_stem"],
            }
        },
    }
