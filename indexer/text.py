"""The one cleaning every catalog text and every query goes through, before any store, model
or response sees it:

- control characters (C0 and C1, but tab, line feed and carriage return) become spaces, as
  the tokenizer already treats them: ``"cable\\x00charger"`` is the words cable and charger;
- an unpaired surrogate (JSON allows ``"\\ud800"``; no encoder, tokenizer or UTF-8 answer
  does) becomes U+FFFD, the replacement character;
- the text is put in Unicode normal form C, so that a precomposed "é" and an "e" followed by a
  combining accent are the same word to BM25, to the filters and to the encoder.

Product ids are not cleaned but checked (`check_identifier`): an id is a name, so one that
holds such characters is refused rather than changed.

>>> clean_text("cafe\\u0301\\x00noir")
'café noir'
"""

from __future__ import annotations

import math
import re
import unicodedata

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with control characters as spaces, unpaired surrogates replaced, in NFC."""
    if text.isascii() and (text.isprintable() or not _CONTROL.search(text)):
        return text  # ASCII without control characters: most text, checked fast
    text = _CONTROL.sub(" ", replace_surrogates(text))
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def replace_surrogates(text: str) -> str:
    """``text`` with each unpaired surrogate replaced by U+FFFD (so that it encodes to UTF-8)."""
    return _SURROGATE.sub("\ufffd", text)


def cleaned(value: object, *, nan_as_null: bool = False) -> object:
    """`clean_text` applied to every string inside ``value`` (lists and dict keys included);
    with ``nan_as_null``, a number that is not finite becomes None (JSON has no NaN, though
    Python reads one); other values as they are. A pydantic ``mode="before"`` validator."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float) and nan_as_null:
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [cleaned(item, nan_as_null=nan_as_null) for item in value]
    if isinstance(value, dict):
        return {cleaned(key): cleaned(item, nan_as_null=nan_as_null)
                for key, item in value.items()}
    return value


def check_identifier(text: str) -> str:
    """``text`` unless it holds a control character or an unpaired surrogate (ValueError)."""
    if _CONTROL.search(text) or _SURROGATE.search(text):
        raise ValueError("must not hold control characters or unpaired surrogates")
    return text
