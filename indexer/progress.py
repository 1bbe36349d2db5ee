"""How long indexing work reports its phases without knowing who watches.

`indexer.indexing` names each phase of a reindex or an upsert and, where the work is counted,
advances it; the CLI draws the phases as progress bars, library callers pass nothing::

    class Printed:
        def start(self, phase: IndexPhase, total: int | None) -> None:
            print("begin", phase, total)
        def advance(self, items: int) -> None: ...
        def finish(self) -> None:
            print("done")

    reindex_catalog(store, Path("products.jsonl"), BiEncoder(), progress=Printed())
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Protocol

#: The phases of a reindex, in order (an upsert skips ``validate``). ``write`` is the store's
#: own work: files and BM25 for the local store, the bulk load for OpenSearch; a rebuild counts
#: it in products written to the new version.
IndexPhase = Literal["validate", "embed texts", "embed titles", "write"]


class IndexProgress(Protocol):
    """Told when each phase starts, how far it got, and when it finished."""

    def start(self, phase: IndexPhase, total: int | None) -> None:
        """``phase`` begins; ``total`` counts its items (None: it is not counted)."""
        ...

    def advance(self, items: int) -> None:
        """``items`` more items of the current phase are done."""
        ...

    def finish(self) -> None:
        """The current phase is done (not called when it failed)."""
        ...


@contextmanager
def phase(
    progress: IndexProgress | None, name: IndexPhase, total: int | None = None
) -> Iterator[None]:
    """Report the work inside the block as phase ``name`` (nothing when ``progress`` is None)."""
    if progress is None:
        yield
        return
    progress.start(name, total)
    yield
    progress.finish()
