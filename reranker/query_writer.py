"""Varied pseudo-queries for the cross-encoder, written from a catalog alone (no judgment read).

The bi-encoder's generator (`reranker.pseudo_queries`) writes one style of query. A
cross-encoder learns the query styles it is shown, and shoppers type several:

- ``title_span``: a few consecutive title words, sometimes after the brand ("wireless earbuds
  noise cancelling");
- ``product_type``: what the product is, as the catalog names it often ("laser printer",
  "toner cartridge"): a title phrase of descriptive words that many titles share;
- ``brand_type``: the brand and the product type ("hp laser printer");
- ``type_attribute``: a short attribute value and the product type ("black mouse pad");
- ``category``: the leaf category, sometimes with the brand;
- then noise, as typed: ``short`` (one word of the query) and ``typo`` (one word misspelt).

A product type is found without labels: a phrase of 1-3 descriptive title words (no brand,
no model code, no number) that at least `MIN_TYPE_TITLES` titles of the catalog contain.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from indexer.schema import Product
from reranker.pseudo_queries import PseudoQuery, product_kind

_WORD = re.compile(r"[^\W_]+(?:[-'/.][^\W_]+)*")
_STOP = frozenset({
    "a", "an", "and", "for", "with", "of", "the", "in", "on", "to", "by", "from", "at", "or",
    "x", "pack", "set", "new", "pcs", "pc", "piece", "pieces", "original", "s",
})
#: Words that describe a product's colour, size or packaging, never what it is.
_NOT_TYPE = frozenset({
    "black", "white", "grey", "gray", "silver", "blue", "red", "green", "yellow", "beige",
    "brown", "pink", "purple", "orange", "gold", "cyan", "magenta", "transparent", "clear",
    "navy", "ivory", "multicolour", "multicolor", "small", "medium", "large", "big", "mini",
    "ghz", "mhz", "inch", "inches", "pages", "sheets", "count", "box", "size", "ounce",
    "pounds", "women", "men", "mens", "womens", "kids", "girls", "boys", "unisex",
})
#: Titles that must share a phrase for it to count as a product type.
MIN_TYPE_TITLES = 5
#: A word in more than this share of the titles is an attribute ("black"), not part of a type.
MAX_TYPE_SHARE = 0.05
#: Attribute values longer than this (in words) say too much to be typed into a search box.
_MAX_ATTRIBUTE_WORDS = 2
QUERY_KINDS = ("title_span", "product_type", "brand_type", "type_attribute", "category")


def words(text: str) -> list[str]:
    """Lower-case words of a text, punctuation inside a word kept ("usb-c", "6.5")."""
    return _WORD.findall(text.lower())


def descriptive(word: str) -> bool:
    """A word that says what a product is: letters only, longer than two, not filler."""
    return len(word) > 2 and word.isalpha() and word not in _STOP


def _phrases(title_words: Sequence[str], brand: set[str]) -> set[tuple[str, ...]]:
    """Runs of 1-3 consecutive descriptive, non-brand words of a title."""
    found: set[tuple[str, ...]] = set()
    for start in range(len(title_words)):
        for size in (1, 2, 3):
            run = tuple(title_words[start:start + size])
            if len(run) < size or not all(descriptive(w) and w not in brand for w in run):
                break
            found.add(run)
    return found


@dataclass(frozen=True)
class TypeVocabulary:
    """How many titles of a catalog contain each descriptive phrase."""

    counts: Counter[tuple[str, ...]]
    titles: int

    @classmethod
    def of(cls, titles: Iterable[tuple[str, str | None]]) -> TypeVocabulary:
        """From (title, brand) pairs."""
        counts: Counter[tuple[str, ...]] = Counter()
        seen = 0
        for title, brand in titles:
            counts.update(_phrases(words(title), set(words(brand or ""))))
            seen += 1
        return cls(counts, seen)

    def types_of(self, title: str, brand: str | None) -> list[str]:
        """The title's product-type phrases, most specific first: longer phrases, then rarer
        ones (a phrase in every title, such as "black", is an attribute, not a type)."""
        limit = max(MAX_TYPE_SHARE * self.titles, 2 * MIN_TYPE_TITLES)
        phrases = [
            p for p in _phrases(words(title), set(words(brand or "")))
            if self.counts[p] >= MIN_TYPE_TITLES
            and all(self.counts[(w,)] <= limit and w not in _NOT_TYPE for w in p)
        ]
        return [" ".join(p) for p in sorted(phrases, key=lambda p: (-len(p), self.counts[p], p))]


@dataclass(frozen=True)
class ProductFields:
    """What the writer reads of a product."""

    id: str
    title: str
    brand: str | None
    kind: str | None
    attributes: tuple[str, ...]


def product_fields(product: Product) -> ProductFields:
    """The writer's view of a product."""
    values = tuple(
        value.strip() for value in product.attributes.values()
        if value and 0 < len(words(value)) <= _MAX_ATTRIBUTE_WORDS
        and all(w.isalpha() and len(w) > 2 for w in words(value))
    )
    return ProductFields(product.id, product.title, product.brand, product_kind(product), values)


def _typo(word: str, rng: random.Random) -> str:
    """One slip of the fingers: a letter dropped, doubled or swapped with the next."""
    i = rng.randrange(1, len(word) - 1)
    slip = rng.choice(("drop", "double", "swap"))
    if slip == "drop":
        return word[:i] + word[i + 1:]
    if slip == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def _noisy(text: str, rng: random.Random, short: float, typo: float) -> tuple[str, str | None]:
    """The query as a shopper may type it, and the noise applied (None: as written)."""
    parts = text.split()
    roll = rng.random()
    if roll < short and len(parts) > 1:
        # The last descriptive word: in English noun phrases, what the thing is.
        picked = [w for w in parts if descriptive(w)] or parts
        return picked[-1], "short"
    if roll < short + typo:
        long_words = [i for i, w in enumerate(parts) if len(w) >= 5 and w.isalpha()]
        if long_words:
            i = rng.choice(long_words)
            parts[i] = _typo(parts[i], rng)
            return " ".join(parts), "typo"
    return text, None


def queries_for(
    product: ProductFields, vocabulary: TypeVocabulary, rng: random.Random
) -> list[PseudoQuery]:
    """Every kind of query this product supports, one each (see the module docstring).

    >>> vocab = TypeVocabulary.of([("Acme laser printer", "Acme")] * 5)
    >>> lamp = ProductFields("1", "Acme laser printer LX-200", "Acme", None, ("black",))
    >>> sorted(q.kind for q in queries_for(lamp, vocab, random.Random(0)))
    ['brand_type', 'product_type', 'title_span', 'type_attribute']
    """
    title_words = [w for w in words(product.title) if w not in _STOP]
    brand = " ".join(words(product.brand or ""))
    found = []
    if len(title_words) >= 2:
        size = min(len(title_words), rng.randint(2, 4))
        start = rng.randrange(len(title_words) - size + 1)
        span = " ".join(title_words[start:start + size])
        if brand and rng.random() < 0.3 and brand not in span:
            span = f"{brand} {span}"
        found.append(("title_span", span))
    types = vocabulary.types_of(product.title, product.brand)
    if types:
        # Mostly the most specific phrase; sometimes a broader one, as shoppers also type.
        kind = types[0] if rng.random() < 0.6 else rng.choice(types)
        found.append(("product_type", kind))
        if brand:
            found.append(("brand_type", f"{brand} {kind}"))
        values = [v.lower() for v in product.attributes if v.lower() not in kind]
        if values:
            found.append(("type_attribute", f"{rng.choice(values)} {kind}"))
    if product.kind:
        leaf = product.kind if not brand or rng.random() < 0.7 else f"{brand} {product.kind}"
        found.append(("category", leaf))
    return [PseudoQuery(text, product.id, kind) for kind, text in found]


def query_kinds(names: Iterable[str]) -> tuple[str, ...]:
    """The kinds named, checked against `QUERY_KINDS` (ValueError names the unknown ones).

    >>> query_kinds(["title_span", "brand_type"])
    ('title_span', 'brand_type')
    """
    kinds = tuple(name.strip() for name in names if name.strip())
    unknown = sorted(set(kinds) - set(QUERY_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown kind {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(QUERY_KINDS)}")
    return kinds


def kinds_suffix(kinds: Iterable[str]) -> str:
    """What a training-groups file name gains for a choice of kinds: nothing for every kind
    (the names files had before kinds could be chosen), else ``-k`` and the sorted kinds."""
    chosen = sorted(set(kinds))
    return "" if set(chosen) == set(QUERY_KINDS) else "-k" + "-".join(chosen)


def write_queries(
    products: Sequence[ProductFields],
    count: int,
    *,
    seed: int = 0,
    short: float = 0.1,
    typo: float = 0.1,
    kinds: Sequence[str] = QUERY_KINDS,
) -> list[PseudoQuery]:
    """``count`` queries from distinct products chosen at random, the kinds mixed evenly
    (each product gets one of ``kinds`` it supports, drawn at random); then noise: a share
    ``short`` cut to one word, a share ``typo`` with a word misspelt. A repeated text is
    skipped. The same for a seed. The noise shows in the kind: ``product_type+typo``.
    """
    kinds = query_kinds(kinds)
    rng = random.Random(seed)
    vocabulary = TypeVocabulary.of((p.title, p.brand) for p in products)
    order = list(products)
    rng.shuffle(order)
    written: list[PseudoQuery] = []
    seen: set[str] = set()
    for product in order:
        options = [q for q in queries_for(product, vocabulary, rng) if q.kind in kinds]
        if not options:
            continue
        query = rng.choice(options)
        text, noise = _noisy(query.text, rng, short, typo)
        if text in seen or not text.strip():
            continue
        seen.add(text)
        kind = query.kind if noise is None else f"{query.kind}+{noise}"
        written.append(PseudoQuery(text, query.product_id, kind))
        if len(written) >= count:
            break
    return written


def title_jaccard(a: str, b: str) -> float:
    """Jaccard overlap of two titles' word sets."""
    left, right = set(words(a)), set(words(b))
    return len(left & right) / len(left | right) if left | right else 0.0


#: Titles at least this alike count as the same product (another size, colour or listing).
NEAR_DUPLICATE_JACCARD = 0.6


def near_duplicate(a: ProductFields, b: ProductFields) -> bool:
    """Whether ``b`` is a near-duplicate of ``a``: never a negative for ``a``'s queries."""
    return a.id == b.id or title_jaccard(a.title, b.title) >= NEAR_DUPLICATE_JACCARD
