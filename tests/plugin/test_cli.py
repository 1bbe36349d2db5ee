"""CLI behaviour that needs no model: clear errors and exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from plugin.cli import app

runner = CliRunner()


def test_unreachable_opensearch_names_the_url() -> None:
    result = runner.invoke(app, ["search", "shoes", "--mode", "bm25", "--store", "opensearch",
                                 "--opensearch-url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "http://127.0.0.1:9" in result.output and "unreachable" in result.output


def test_unknown_store_and_bad_mode_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "shoes", "--store", "elastic"])
    assert result.exit_code == 2 and "store" in result.output
    result = runner.invoke(app, ["search", "shoes", "--mode", "fuzzy"])
    assert result.exit_code == 2 and "--mode" in result.output


def test_oversized_query_names_the_limit() -> None:
    result = runner.invoke(app, ["search", "x" * 600])
    assert result.exit_code == 2 and "512" in result.output


def test_strict_reindex_writes_nothing(tmp_path: Path, _isolated_home: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "title": "ok"}\n{"id": "b", "price": -3, "title": "x"}\n')
    result = runner.invoke(app, ["reindex", "--catalog", str(bad), "--strict"])
    assert result.exit_code == 2
    assert "line 2" in result.output and "price" in result.output
    assert not (_isolated_home / "indexes" / "default" / "CURRENT").exists()


def test_tune_ranker_needs_queries_and_qrels_for_every_catalog(tmp_path: Path) -> None:
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "a", "title": "ok"}\n')
    result = runner.invoke(app, [
        "tune", "ranker", "--catalog", str(catalog), "--catalog", str(catalog),
        "--queries", str(tmp_path / "q.tsv"), "--qrels", str(tmp_path / "r.txt"),
        "--out", str(tmp_path / "r.json"),
    ])
    assert result.exit_code == 2
    assert "2 --catalog, 1 --queries, 1 --qrels" in " ".join(result.output.split())
    assert not (tmp_path / "r.json").exists()


def test_serve_runs_numpy_blas_on_the_threads_the_setting_gives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn
    from threadpoolctl import threadpool_info, threadpool_limits

    from plugin import cli
    from plugin.settings import Settings

    def blas() -> set[int]:
        return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    before = max(blas())
    monkeypatch.setattr(cli, "build_pipeline", lambda settings: object())
    monkeypatch.setattr("plugin.api.create_app", lambda settings, pipeline: object())
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    try:
        assert Settings().blas_threads == 1
        cli._serve(Settings(blas_threads=0))
        assert max(blas()) == before  # 0: the library's own
        cli._serve(Settings())
        assert blas() == {1}
    finally:
        threadpool_limits(limits=before, user_api="blas")
