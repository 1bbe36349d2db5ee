"""What every ``shoprank`` command shares: the consoles, the one-line failure, settings from
options, the typed choices and options that several commands take, and index names."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from indexer.errors import IndexerError
from indexer.settings import IndexerSettings
from plugin.components import build_store
from plugin.settings import Settings

#: Messages, progress and tables about the work (stderr); `out` is for results (stdout).
console = Console(stderr=True)
out = Console()


class StoreChoice(StrEnum):
    """Where the index lives (`IndexerSettings.store`)."""

    local = "local"
    opensearch = "opensearch"


class RerankerChoice(StrEnum):
    """Which reranker runs (`plugin.settings.RerankerKind`)."""

    onnx = "onnx"
    cross_encoder = "cross-encoder"
    triton = "triton"
    none = "none"


class ModeChoice(StrEnum):
    """How retrieval runs (`indexer.store.RetrievalMode`)."""

    bm25 = "bm25"
    vector = "vector"
    hybrid = "hybrid"


CheckpointOption = Annotated[
    Path | None, typer.Option("--checkpoint", help="Cross-encoder checkpoint folder.")
]
IndexOption = Annotated[
    str | None, typer.Option("--index", help="Index name under $SHOPRANK_HOME/indexes.")
]
StoreOption = Annotated[
    StoreChoice | None, typer.Option("--store", help="Where the index lives (default: local).")
]
UrlOption = Annotated[
    str | None, typer.Option("--opensearch-url", help="OpenSearch URL (with --store opensearch).")
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on one line and exit with ``code`` (2: bad input)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def problem(error: Mapping[str, Any]) -> str:
    """One validation error as 'field: message (got value)'."""
    where = ".".join(str(part) for part in error["loc"])
    if not where:
        return str(error["msg"])
    got = error.get("input")
    return f"{where}: {error['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})")


def problems(error: ValidationError) -> str:
    """Every error of a pydantic validation on one line."""
    return "; ".join(map(problem, error.errors()))


def setup_logging(verbose: bool) -> None:
    """Log through rich on stderr; quiet the chatty libraries."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    for noisy in ("httpx", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The client logs every failed connection with a traceback; our own message names the URL.
    logging.getLogger("opensearch").setLevel(logging.ERROR)


def build_settings(
    *, store: StoreChoice | None = None, opensearch_url: str | None = None, **overrides: object
) -> Settings:
    """The environment's settings with the options that were given (a choice as its value);
    invalid ones (an option's value or a ``SHOPRANK_*`` variable) exit 2 with one line naming
    each field."""
    values = {
        key: value.value if isinstance(value, StrEnum) else value
        for key, value in overrides.items()
        if value is not None
    }
    indexer = {"store": None if store is None else store.value, "opensearch_url": opensearch_url}
    try:
        if any(value is not None for value in indexer.values()):
            values["indexer"] = IndexerSettings.model_validate(
                {key: value for key, value in indexer.items() if value is not None}
            )
        return Settings.model_validate(values)
    except ValidationError as e:
        fail(f"invalid settings: {problems(e)}")


def index_exists(settings: Settings) -> bool:
    """Whether the settings' index serves a version (unreachable store: exit 1)."""
    try:
        return build_store(settings).exists()
    except IndexerError as e:
        fail(str(e), code=1)


def eval_index_name(catalog: Path) -> str:
    """The local index `eval` and `tune` build for a catalog file: one per file and version."""
    stat = catalog.stat()
    key = f"{catalog.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    stem = re.sub(r"[^a-z0-9_-]+", "-", catalog.name.split(".")[0].lower()).strip("-")[:32]
    return f"eval-{stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def catalog_label(catalog: Path) -> str:
    """How a model card names its catalog: folder and file, no machine-specific path."""
    return f"{catalog.parent.name}/{catalog.name}"


def check_catalog_and_out(catalog: Path, out_dir: Path | None = None) -> None:
    """Fail unless --catalog is a file and --out (when given) is missing or an empty folder."""
    if not catalog.is_file():
        fail(f"--catalog: file not found: {catalog}")
    if out_dir is not None and out_dir.exists() and (
        not out_dir.is_dir() or any(out_dir.iterdir())
    ):
        fail(f"--out {out_dir} exists and is not an empty folder; choose a new one")
