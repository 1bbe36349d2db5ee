"""Read a catalog (JSONL or JSONL.gz) into validated products, reporting every bad line."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from indexer.errors import CatalogError
from indexer.schema import Product

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LineError:
    """A catalog line that was not loaded, and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class CatalogLoad:
    """The valid products of a catalog (last one wins per id) plus what was rejected."""

    products: list[Product]
    errors: list[LineError] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)


#: The longest catalog line read (1 MiB; real records are a few KB): a longer line is rejected
#: and its bytes are skipped without being held in memory.
MAX_LINE_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
#: What JSON counts as white space; a line of nothing else is blank and skipped.
_JSON_SPACE = b" \t\r\n"


def _open_binary(path: Path) -> IO[bytes] | gzip.GzipFile:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return path.open("rb")


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "record"
        problems.append(f"field '{where}': {item['msg']}")
    return "; ".join(problems)


def parse_line(text: str) -> Product:
    """Parse one catalog line. Raises ValueError with a readable reason."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} (column {e.colno})") from e
    except RecursionError as e:
        raise ValueError("invalid JSON: nested too deeply") from e
    except ValueError as e:  # an integer of more digits than Python converts (4300)
        raise ValueError(f"invalid JSON: {str(e).split('; use sys.')[0]}") from e
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    try:
        return Product.model_validate(record)
    except ValidationError as e:
        raise ValueError(_describe(e)) from e


def decode_line(raw: bytes) -> str:
    """One line's bytes as text: a UTF-8 byte-order mark at its start and the line end (LF or
    CRLF) are dropped. Raises ValueError naming the first byte that is not UTF-8."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    raw = raw.removesuffix(b"\n").removesuffix(b"\r")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"not UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line"
        ) from e


def _raw_lines(handle: IO[bytes] | gzip.GzipFile) -> Iterator[bytes | None]:
    """Each line's bytes (lines end at LF only), or None for a line over `MAX_LINE_BYTES`,
    whose bytes are skipped."""
    while raw := handle.readline(MAX_LINE_BYTES + 1):
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw
            continue
        while (rest := handle.readline(1 << 16)) and not rest.endswith(b"\n"):
            pass
        yield None


def iter_catalog(path: Path) -> Iterator[tuple[int, Product | LineError]]:
    """Yield (line number, product or error) for each non-blank line of a catalog file.

    Lines are numbered as ``wc -l`` and editors count them (a line ends at LF; a CR before it is
    dropped). A line is rejected, naming why, when it is not UTF-8, not JSON, not a JSON object,
    over `MAX_LINE_BYTES`, or not a valid product (naming the field).
    """
    if not path.is_file():
        raise CatalogError(f"catalog not found: {path}")
    try:
        with _open_binary(path) as handle:
            for number, raw in enumerate(_raw_lines(handle), start=1):
                if raw is None:
                    yield number, LineError(
                        number, f"line too long: over {MAX_LINE_BYTES} bytes (the limit)"
                    )
                    continue
                if not raw.removeprefix(_BOM).strip(_JSON_SPACE):
                    continue
                try:
                    yield number, parse_line(decode_line(raw))
                except ValueError as e:
                    yield number, LineError(number, str(e))
    except (OSError, EOFError) as e:
        raise CatalogError(f"cannot read catalog {path}: {e}") from e


def load_catalog(path: Path | str, *, strict: bool = False) -> CatalogLoad:
    """Load and validate a catalog.

    Bad lines are skipped and reported; with ``strict=True`` any bad line raises
    :class:`CatalogError` (listing them) so that nothing gets written. A repeated id is
    reported and the last occurrence wins.
    """
    path = Path(path)
    by_id: dict[str, Product] = {}
    load = CatalogLoad(products=[])
    for _, item in iter_catalog(path):
        if isinstance(item, LineError):
            load.errors.append(item)
            continue
        if item.id in by_id:
            load.duplicate_ids.append(item.id)
            del by_id[item.id]
        by_id[item.id] = item
    if strict and load.errors:
        raise CatalogError(
            f"{path}: {len(load.errors)} invalid line(s); nothing was written"
            + listed(load.errors)
        )
    if load.errors:
        logger.warning("%s: skipped %d invalid line(s)", path, len(load.errors))
    if load.duplicate_ids:
        logger.warning("%s: %d duplicate id(s), the last line wins", path, len(load.duplicate_ids))
    load.products = list(by_id.values())
    return load


def listed(errors: list[LineError], shown: int = 20) -> str:
    """The first ``shown`` errors, one an indented line, and how many more there are."""
    lines = "".join(f"\n  {error}" for error in errors[:shown])
    more = f"\n  ... and {len(errors) - shown} more" if len(errors) > shown else ""
    return lines + more
