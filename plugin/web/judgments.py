"""Judgments as `shoprank eval` and `shoprank tune` read them: a queries file
(``qid<TAB>query``) and TREC qrels (``qid 0 docid grade``), read for the page's grades and
appended to by the page's ratings.

A rating is one appended qrels line, written and flushed to disk before the page is told it was
saved. Rating a product again appends again: `reranker.metrics.load_qrels` keeps the last line
of a (query, product) pair, so the newest grade counts and the history stays in the file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from plugin.errors import PluginError
from reranker.errors import EvaluationInputError
from reranker.metrics import Qrels, load_qrels, load_queries

#: Grades the page offers, as in the ESCI judgments (3 exact ... 0 irrelevant).
GRADES = (0, 1, 2, 3)


class JudgmentsError(PluginError):
    """The judgments files cannot be read or written."""


def normalized(query: str) -> str:
    """How queries are matched to the queries file: case and spacing do not count."""
    return " ".join(query.lower().split())


def new_qid(query: str) -> str:
    """A stable id for a query first judged on the page (the same text, the same id)."""
    return "web-" + hashlib.sha1(normalized(query).encode("utf-8")).hexdigest()[:12]


@dataclass
class Judgments:
    """The two files, read again whenever either changed on disk."""

    qrels_path: Path
    queries_path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stamp: tuple[tuple[int, int], tuple[int, int]] | None = field(default=None, repr=False)
    _qids: dict[str, str] = field(default_factory=dict, repr=False)
    _qrels: Qrels = field(default_factory=dict, repr=False)

    def grades(self, query: str) -> dict[str, int] | None:
        """The grades of ``query``'s judged products, or None when the query has no id yet."""
        with self._lock:
            self._refresh()
            qid = self._qids.get(normalized(query))
            return None if qid is None else dict(self._qrels.get(qid, {}))

    def record(self, query: str, product_id: str, grade: int) -> str:
        """Append one rating; returns the query's id. The line is on disk when this returns."""
        if grade not in GRADES:
            raise ValueError(f"grade must be one of {GRADES}, got {grade}")
        if not product_id or any(c.isspace() for c in product_id):
            raise ValueError(f"product_id {product_id!r} is empty or holds whitespace")
        with self._lock:
            self._refresh()
            key = normalized(query)
            qid = self._qids.get(key)
            if qid is None:
                qid = new_qid(query)
                _append(self.queries_path, f"{qid}\t{' '.join(query.split())}\n")
                self._qids[key] = qid
            _append(self.qrels_path, f"{qid} 0 {product_id} {grade}\n")
            self._qrels.setdefault(qid, {})[product_id] = grade
            self._stamp = self._current_stamp()
            return qid

    def _current_stamp(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return (_file_stamp(self.qrels_path), _file_stamp(self.queries_path))

    def _refresh(self) -> None:
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        try:
            queries = load_queries(self.queries_path) if self.queries_path.exists() else {}
            qrels = load_qrels(self.qrels_path) if self.qrels_path.exists() else {}
        except EvaluationInputError as e:
            raise JudgmentsError(f"cannot use the judgments: {e}") from e
        self._qids = {normalized(text): qid for qid, text in queries.items()}
        self._qrels = qrels
        self._stamp = stamp


def _file_stamp(path: Path) -> tuple[int, int]:
    """Modification time and size: either changes when another writer edits the file."""
    try:
        stat = path.stat()
    except OSError:  # missing, or under something that is not a folder: writing will say
        return (-1, -1)
    return (stat.st_mtime_ns, stat.st_size)


def _append(path: Path, line: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as e:
        raise JudgmentsError(f"cannot write {path}: {e}") from e
