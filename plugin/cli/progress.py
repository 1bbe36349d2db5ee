"""Indexing phases drawn on the console: rich progress bars on a terminal, one plain line per
finished phase elsewhere (tests, CI logs, a file)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from indexer.progress import IndexPhase, IndexProgress

#: What each store's ``write`` phase does.
WRITE_LABELS = {"local": "write files and BM25", "opensearch": "bulk load to OpenSearch"}


class BarsProgress:
    """One rich progress bar per phase, left on screen when done."""

    def __init__(self, progress: Progress, write_label: str) -> None:
        self._progress = progress
        self._write_label = write_label
        self._task: TaskID | None = None
        self._total = 1

    def start(self, phase: IndexPhase, total: int | None) -> None:
        label = self._write_label if phase == "write" else phase
        self._task = self._progress.add_task(label, total=total)
        self._total = total or 1  # an uncounted phase shows 1/1 once done

    def advance(self, items: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, items)

    def finish(self) -> None:
        if self._task is not None:
            self._progress.update(self._task, total=self._total, completed=self._total)
            self._task = None


class LinesProgress:
    """One line per finished phase: ``embed texts: 6764 in 12.3 s``."""

    def __init__(self, console: Console, write_label: str) -> None:
        self._console = console
        self._write_label = write_label
        self._phase = ""
        self._items: int | None = None
        self._started = 0.0

    def start(self, phase: IndexPhase, total: int | None) -> None:
        self._phase = self._write_label if phase == "write" else phase
        self._items = total
        self._started = time.perf_counter()

    def advance(self, items: int) -> None:
        pass

    def finish(self) -> None:
        count = "" if self._items is None else f"{self._items} in "
        seconds = time.perf_counter() - self._started
        self._console.print(f"{self._phase}: {count}{seconds:.1f} s", highlight=False)


@contextmanager
def index_progress(console: Console, store: str) -> Iterator[IndexProgress]:
    """The phases of one indexing job, as bars on a terminal and as lines elsewhere."""
    write_label = WRITE_LABELS.get(store, "write")
    if not console.is_terminal:
        yield LinesProgress(console, write_label)
        return
    columns = (
        TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bars:
        yield BarsProgress(bars, write_label)
