"""Text analysis for lexical search: the one definition both stores follow.

The chain is: split into runs of Unicode letters and digits -> cut a word longer than
`MAX_TERM_CHARS` to its first `MAX_TERM_CHARS` (UTF-16 code units, as Lucene counts) ->
lowercase one character at a time (as Lucene does: Python's own ``str.lower`` differs for "İ"
and a final "Σ") -> drop stop words -> Lucene's minimal English stemmer (plurals only). The local
store runs it in Python; the OpenSearch store declares the same chain as an index analyzer
(``opensearch_analysis_settings``), so BM25 sees the same terms in both. Plural-only stemming was
chosen over Snowball because it is exactly reproducible in both stores and does not conflate
words such as organic/organ or paste/past; it also scored higher nDCG@10 on both shared catalogs
(README). Words are cut because Lucene refuses a term over 32,766 bytes, which failed a whole
OpenSearch reindex; a query's long word is cut the same way, so it still matches.

Letters and digits are Unicode's as each side's tables know them: a letter assigned after the
JVM's Unicode version (13.0 for Java 17) is a word locally and not to OpenSearch.
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
#: The longest term, in UTF-16 code units (Lucene's ``truncate`` filter); longer words are cut.
MAX_TERM_CHARS = 512
#: Changes whenever `analyze` would produce other terms: a local index built with another
#: version must be rebuilt, since its stored terms no longer match analysed queries.
ANALYZER_VERSION = "letters-digits/truncate-512/lucene-lower/lucene-stop/minimal-english/2"
ANALYZER_NAME = "shoprank_text"

_TOKEN = regex.compile(TOKEN_PATTERN)
_STOP = frozenset(STOPWORDS)


def minimal_english_stem(word: str) -> str:
    """Lucene's ``EnglishMinimalStemmer`` (Harman's S-stemmer): plural endings only.

    >>> [minimal_english_stem(w) for w in ("jackets", "batteries", "glass", "keys", "shoes")]
    ['jacket', 'battery', 'glass', 'key', 'shoes']
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


def _truncated(word: str) -> str:
    """``word`` cut to `MAX_TERM_CHARS` UTF-16 code units, as Lucene's ``truncate`` filter cuts
    it (half a surrogate pair left at the end becomes U+FFFD, as Lucene writes it)."""
    if len(word) * 2 <= MAX_TERM_CHARS:
        return word
    units = word.encode("utf-16-le")
    if len(units) <= 2 * MAX_TERM_CHARS:
        return word
    return units[: 2 * MAX_TERM_CHARS].decode("utf-16-le", errors="replace")


def _lowered(word: str) -> str:
    """``word`` lower-cased one character at a time, as Lucene's ``lowercase`` filter does.

    >>> _lowered("İSTANBUL"), _lowered("ΟΔΟΣ")
    ('istanbul', 'οδοσ')
    """
    if "İ" not in word and "Σ" not in word:
        return word.lower()
    return "".join("i" if char == "İ" else char.lower() for char in word)


def tokens(text: str) -> list[str]:
    """Lower-case tokens of a text, stopwords kept and nothing stemmed.

    >>> tokens("Bottle without Straw")
    ['bottle', 'without', 'straw']
    """
    return [_lowered(_truncated(word)) for word in _TOKEN.findall(text)]


def analyze(text: str) -> list[str]:
    """Terms of a text, in order, as BM25 indexes them.

    >>> analyze("The Running Jackets for women")
    ['running', 'jacket', 'women']
    """
    return [minimal_english_stem(token) for token in tokens(text) if token not in _STOP]


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
            "shoprank_truncate": {"type": "truncate", "length": MAX_TERM_CHARS},
            "shoprank_stop": {"type": "stop", "stopwords": list(STOPWORDS)},
            "shoprank_stem": {"type": "stemmer", "language": "minimal_english"},
        },
        "analyzer": {
            ANALYZER_NAME: {
                "type": "custom",
                "tokenizer": "shoprank_words",
                "filter": ["shoprank_truncate", "lowercase", "shoprank_stop", "shoprank_stem"],
            }
        },
    }
