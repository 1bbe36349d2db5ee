"""The dependency direction bench -> plugin -> reranker -> indexer, checked on the source,
and the size of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {
    "indexer": {"indexer"},
    "reranker": {"reranker", "indexer"},
    "plugin": {"plugin", "reranker", "indexer"},
    "bench": {"bench", "plugin", "reranker", "indexer"},
}
#: Lines a module may have outside bench/ (a longer one holds more than one job).
MAX_MODULE_LINES = 400
PROJECT = {"indexer", "reranker", "plugin", "tests", "bench"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_only_import_downwards(package: str) -> None:
    for path in (REPO / package).rglob("*.py"):
        bad = (imported_roots(path) & PROJECT) - ALLOWED[package]
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_triton_models_import_nothing_from_the_project() -> None:
    for path in (REPO / "triton_models").rglob("*.py"):
        assert not imported_roots(path) & PROJECT, path


def test_modules_stay_small() -> None:
    for package in sorted(set(ALLOWED) - {"bench"}):
        for path in (REPO / package).rglob("*.py"):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)} has {lines} lines"


def test_tests_of_bench_code_live_under_tests_bench() -> None:
    for path in (REPO / "tests").rglob("test_*.py"):
        if "bench" in imported_roots(path):
            assert path.parent.name == "bench", f"{path.relative_to(REPO)} tests bench code"
