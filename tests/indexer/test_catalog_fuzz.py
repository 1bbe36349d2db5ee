"""Catalog lines from hypothesis: whatever a line holds, it is accepted or rejected with a
reason that names its line (and, for a JSON object, the field); no line is lost; a reindex
that fails leaves the serving index as it was.

`tests/indexer/test_catalog.py` holds the hand-written cases of each rule.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexer.catalog import MAX_LINE_BYTES, load_catalog
from indexer.errors import CatalogError
from indexer.indexing import reindex_catalog
from indexer.local_store import LocalStore
from indexer.opensearch_store import OpenSearchStore
from tests.indexer.reindex_child import HashEncoder
from tests.indexer.store_factories import STORE_KINDS, store_factory

BOM = b"\xef\xbb\xbf"
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])

#: JSON values of every kind, nested a little.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
#: JSON objects that look like products more or less: the schema's fields with any values.
FIELDS = ["id", "title", "description", "bullet_points", "brand", "category", "price",
          "rating", "rating_count", "image_url", "attributes", "in_stock", "stock"]
json_objects = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=8
)
#: One line's bytes: anything without a line feed.
line_bytes = st.binary(max_size=200).map(lambda raw: raw.replace(b"\n", b""))


def valid_line(i: int) -> bytes:
    record = {"id": f"valid-{i}", "title": f"valid product {i}", "price": i}
    return json.dumps(record).encode()


def is_blank(raw: bytes) -> bool:
    """The loader's rule: a line of JSON white space only (after a byte-order mark)."""
    return not raw.removeprefix(BOM).strip(b" \t\r\n")


def write_mixed(path: Path, fuzzed: list[bytes]) -> tuple[list[int], list[int]]:
    """A catalog where valid lines and fuzzed ones alternate; the line numbers of each."""
    lines, valid, fuzz = [], [], []
    for i, raw in enumerate(fuzzed):
        lines.append(valid_line(i))
        valid.append(len(lines))
        lines.append(raw)
        fuzz.append(len(lines))
    lines.append(valid_line(len(fuzzed)))
    valid.append(len(lines))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(b"\n".join(lines) + b"\n")
    return valid, fuzz


def check_nothing_lost(path: Path, fuzzed: list[bytes]) -> None:
    valid, fuzz = write_mixed(path, fuzzed)
    load = load_catalog(path)
    rejected = {error.line: error.reason for error in load.errors}
    accepted = len(load.products) + len(load.duplicate_ids)
    read = len(valid) + sum(not is_blank(raw) for raw in fuzzed)
    assert accepted + len(rejected) == read
    assert set(rejected) <= set(fuzz), "a valid line was rejected, or a rejection misnumbered"
    assert all(reason.strip() for reason in rejected.values())
    assert {f"valid-{i}" for i in range(len(valid))} <= {p.id for p in load.products}
    for line in rejected:
        raw = fuzzed[fuzz.index(line)]
        assert not is_blank(raw), f"blank line {line} was rejected: {rejected[line]}"


@FUZZ
@given(fuzzed=st.lists(line_bytes, min_size=1, max_size=8))
def test_any_bytes_are_accepted_or_rejected_and_nothing_is_lost(
    tmp_path: Path, fuzzed: list[bytes]
) -> None:
    check_nothing_lost(tmp_path / "bytes.jsonl", fuzzed)


@FUZZ
@given(fuzzed=st.lists(json_objects, min_size=1, max_size=8))
def test_any_json_object_is_accepted_or_rejected_naming_the_field(
    tmp_path: Path, fuzzed: list[dict[str, Any]]
) -> None:
    lines = [json.dumps(record).encode() for record in fuzzed]
    check_nothing_lost(tmp_path / "objects.jsonl.gz", lines)
    load = load_catalog(tmp_path / "objects.jsonl.gz")
    for error in load.errors:
        assert error.reason.startswith("field '"), error


@FUZZ
@given(value=json_values.filter(lambda value: not isinstance(value, dict)))
def test_a_json_value_that_is_not_an_object_is_rejected_naming_its_type(
    tmp_path: Path, value: object
) -> None:
    path = tmp_path / "values.jsonl"
    path.write_bytes(json.dumps(value).encode() + b"\n")
    (error,) = load_catalog(path).errors
    assert error.line == 1 and "expected a JSON object, got" in error.reason


# -- bytes that editors and other tools put in files --------------------------------------------

PRODUCT = b'{"id": "a", "title": "kettle"}'
ODD_LINES = [
    pytest.param(b"\xff\xfe" + PRODUCT, "not UTF-8: byte 0xff at byte 1", id="utf16-bom"),
    pytest.param(b'{"id": "a", "title": "caf\xe9"}', "not UTF-8: byte 0xe9 at byte 26",
                 id="latin1"),
    pytest.param(b'{"id": "a", "title": "ke\x00ttle"}', "invalid JSON: Invalid control character",
                 id="raw-nul"),
    pytest.param(PRODUCT + b"\x00", "invalid JSON: Extra data (column 31)", id="trailing-nul"),
    pytest.param(b"[" * 100_000, "invalid JSON: nested too deeply", id="deep-nesting"),
    pytest.param(b'{"id": "a", "title": "t", "n": 1' + b"0" * 5000 + b"}",
                 "invalid JSON: Exceeds the limit (4300 digits)", id="huge-integer"),
    pytest.param(b'{"id": "a", "title": "' + b"x" * MAX_LINE_BYTES + b'"}',
                 f"line too long: over {MAX_LINE_BYTES} bytes", id="over-the-limit"),
]


@pytest.mark.parametrize(("raw", "reason"), ODD_LINES)
def test_an_odd_line_is_rejected_with_a_clear_reason_and_the_next_one_is_read(
    tmp_path: Path, raw: bytes, reason: str
) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_bytes(raw + b"\n" + valid_line(1) + b"\n")
    load = load_catalog(path)
    (error,) = load.errors
    assert error.line == 1 and error.reason.startswith(reason), error.reason
    assert [p.id for p in load.products] == ["valid-1"]


ACCEPTED_LINES = [
    pytest.param(BOM + PRODUCT, id="utf8-bom"),
    pytest.param(PRODUCT + b"\r", id="crlf"),
    pytest.param(b'{"id": "a",\r "title": "kettle"}', id="lone-cr-inside"),
    pytest.param(b'{"id": "a", "title": "kettle \\u0000 pot"}', id="escaped-nul"),
    pytest.param(b'{"id": "a", "title": "' + b"x" * (MAX_LINE_BYTES - 40) + b'"}',
                 id="long-within-the-limit"),
]


@pytest.mark.parametrize("raw", ACCEPTED_LINES)
def test_these_lines_are_read_as_products_and_numbered_as_editors_do(
    tmp_path: Path, raw: bytes
) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_bytes(raw + b"\n" + b"not json\n")
    load = load_catalog(path)
    assert [p.id for p in load.products] == ["a"]
    assert [error.line for error in load.errors] == [2]


# -- a reindex that fails --------------------------------------------------------------------

@pytest.fixture(params=STORE_KINDS)
def serving(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Any:
    """A store serving three products, written by the stand-in encoder."""
    for make in store_factory(request.param, tmp_path):
        store = make(HashEncoder().dimension)
        catalog = tmp_path / "serving.jsonl"
        catalog.write_bytes(b"".join(valid_line(i) + b"\n" for i in range(3)))
        reindex_catalog(store, catalog, HashEncoder())  # type: ignore[arg-type]
        yield store


def snapshot(store: LocalStore | OpenSearchStore) -> tuple[int, list[str | None]]:
    return store.count(), [getattr(store.get(f"valid-{i}"), "title", None) for i in range(3)]


@FUZZ
@given(fuzzed=st.lists(line_bytes.filter(lambda raw: not is_blank(raw)), min_size=1,
                       max_size=4))
def test_a_failed_reindex_leaves_the_serving_index_as_it_was(
    serving: LocalStore | OpenSearchStore, tmp_path: Path, fuzzed: list[bytes]
) -> None:
    """Strict mode with a bad line, or a catalog without one valid product: nothing is
    written, whatever the lines hold."""
    before = snapshot(serving)
    catalog = tmp_path / "next.jsonl"
    write_mixed(catalog, fuzzed)
    if load_catalog(catalog).errors:
        with pytest.raises(CatalogError, match="nothing was written"):
            reindex_catalog(serving, catalog, HashEncoder(), strict=True)  # type: ignore[arg-type]
    only_fuzz = tmp_path / "only-fuzz.jsonl"
    only_fuzz.write_bytes(b"\n".join(fuzzed) + b"\n")
    if not load_catalog(only_fuzz).products:
        with pytest.raises(CatalogError, match="no valid product"):
            reindex_catalog(serving, only_fuzz, HashEncoder())  # type: ignore[arg-type]
    assert snapshot(serving) == before
