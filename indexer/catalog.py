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


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


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
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    try:
        return Product.model_validate(record)
    except ValidationError as e:
        raise ValueError(_describe(e)) from e


def iter_catalog(path: Path) -> Iterator[tuple[int, Product | LineError]]:
    """Yield (line number, product or error) for each non-blank line of a catalog file."""
    if not path.is_file():
        raise CatalogError(f"catalog not found: {path}")
    try:
        with _open_text(path) as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    yield number, parse_line(text)
                except ValueError as e:
                    yield number, LineError(number, str(e))
    except (OSError, UnicodeDecodeError, EOFError) as e:
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
        shown = "\n".join(f"  {error}" for error in load.errors[:20])
        more = f"\n  ... and {len(load.errors) - 20} more" if len(load.errors) > 20 else ""
        raise CatalogError(
            f"{path}: {len(load.errors)} invalid line(s); nothing was written\n{shown}{more}"
        )
    if load.errors:
        logger.warning("%s: skipped %d invalid line(s)", path, len(load.errors))
    if load.duplicate_ids:
        logger.warning("%s: %d duplicate id(s), the last line wins", path, len(load.duplicate_ids))
    load.products = list(by_id.values())
    return load
