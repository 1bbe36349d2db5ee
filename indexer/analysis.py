"""Text analysis for lexical search: the one definition both stores follow.

The chain is: split into runs of Unicode letters and digits -> lowercase -> drop stop words ->
Lucene's minimal English stemmer (plurals only). The local store runs it in Python; the OpenSearch
store declares the same chain as an index analyzer (``opensearch_analysis_settings``), so BM25
sees the same terms in both. Plural-only stemming was chosen over Snowball because it is exactly
reproducible in both stores and does not conflate words such as organic/organ or paste/past; it
also scored higher nDCG@10 on both shared catalogs (README).
"""

from __future__ import annotations

from typing import Any

import regex

#: Lucene's English stop set (``_english_``), spelled out so both stores share one list.
STOPWORDS: tuple[str, ...] = (
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is",
    "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with",
)
TOKEN_PATTERN = r"[\p{L}\p{N}]+"
#: Changes whenever `analyze` would produce other terms: a local index built with another
#: version must be rebuilt, since its stored terms no longer match analysed queries.
ANALYZER_VERSION = "letters-digits/lucene-stop/minimal-english/1"
ANALYZER_NAME = "shoprank_text"

_TOKEN = regex.compile(TOKEN_PATTERN)
_STOP = frozenset(STOPWORDS)


def minimal_english_stem(word: str) -> str:
    """Lucene's ``EnglishMinimalStemmer`` (Harman's S-stemmer): plural endings only.

    >>> [minimal_english_stem(w) for w in ("shoes", "batteries", "glass", "keys", "toes")]
    ['shoe', 'battery', 'glass', 'key', 'toe']
    """
    n = len(word)
    if n < 3 or word[-1] != "s" or word[-2] in "us":
        return word
    if word[-2] == "e":
        if n > 3 and word[-3] == "i" and word[-4] not in "ae":
            return word[:-3] + "y"
        if word[-3] in "iaoe":
            return word
    return word[:-1]


def tokens(text: str) -> list[str]:
    """Lower-case tokens of a text, stopwords kept and nothing stemmed.

    >>> tokens("Bottle without Straw")
    ['bottle', 'without', 'straw']
    """
    return [t.lower() for t in _TOKEN.findall(text)]


def analyze(text: str) -> list[str]:
    """Terms of a text, in order, as BM25 indexes them.

    >>> analyze("The Running Shoes for women")
    ['running', 'shoe', 'women']
    """
    return [
        minimal_english_stem(token)
        for token in (t.lower() for t in _TOKEN.findall(text))
        if token not in _STOP
    ]


def opensearch_analysis_settings() -> dict[str, Any]:
    """The same chain as an OpenSearch analyzer definition (index ``settings.analysis``)."""
    return {
        "tokenizer": {
            "shoprank_words": {
                "type": "pattern",
                "pattern": TOKEN_PATTERN,
                "group": 0,
            }
        },
        "filter": {
            "shoprank_stop": {"type": "stop", "stopwords": list(STOPWORDS)},
            "shoprank_stem": {"type": "stemmer", "language": "minimal_english"},
        },
        "analyzer": {
            ANALYZER_NAME: {
                "type": "custom",
                "tokenizer": "shoprank_words",
                "filter": ["lowercase", "shoprank_stop", "shoprank_stem"],
            }
        },
    }
