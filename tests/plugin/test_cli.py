"""CLI behaviour that needs no model: clear errors and exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import click
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from indexer.encoder import EncoderStamp
from indexer.settings import IndexerSettings
from indexer.store import RETRIEVAL_MODES
from plugin.cli import app
from plugin.cli import index as index_cli
from plugin.cli import serve as serve_cli
from plugin.cli.common import ModeChoice, RerankerChoice, StoreChoice
from plugin.cli.eval import ProtocolChoice, StageChoice
from plugin.cli.serve import SessionStoreChoice
from plugin.offline_eval import STAGES, EvalProtocol
from plugin.settings import RerankerKind, SessionStoreKind
from tests.conftest import axis_vectors

runner = CliRunner()


def test_unreachable_opensearch_names_the_url() -> None:
    result = runner.invoke(app, ["search", "shoes", "--mode", "bm25", "--store", "opensearch",
                                 "--opensearch-url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "http://127.0.0.1:9" in result.output and "unreachable" in result.output


def test_unknown_store_and_bad_mode_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "shoes", "--store", "elastic"])
    assert result.exit_code == 2 and "store" in result.output
    assert "'local'" in result.output and "'opensearch'" in result.output
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

    from plugin.settings import Settings

    def blas() -> set[int]:
        return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    before = max(blas())
    monkeypatch.setattr(serve_cli, "build_pipeline", lambda settings: object())
    monkeypatch.setattr("plugin.api.create_app", lambda settings, pipeline: object())
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    try:
        assert Settings().blas_threads == 1
        serve_cli.serve_api(Settings(blas_threads=0))
        assert max(blas()) == before  # 0: the library's own
        serve_cli.serve_api(Settings())
        assert blas() == {1}
    finally:
        threadpool_limits(limits=before, user_api="blas")


def test_serve_with_several_workers_needs_sessions_in_redis() -> None:
    result = runner.invoke(app, ["serve", "--workers", "2", "--session-store", "memory"])
    assert result.exit_code == 2
    assert "--workers 2 needs --session-store redis" in " ".join(result.output.split())
    for bad, limit in (("0", "greater than or equal to 1"), ("65", "less than or equal to 64")):
        out_of_range = runner.invoke(app, ["serve", "--workers", bad], env={"COLUMNS": "200"})
        assert out_of_range.exit_code == 2
        assert "'--workers'" in out_of_range.output and limit in out_of_range.output


def test_workers_get_the_commands_settings_and_a_metrics_folder_removed_afterwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    import uvicorn

    from plugin.metrics import MULTIPROC_ENV
    from plugin.settings import Settings

    class Built:
        def close(self) -> None:
            return None

    seen: dict[str, object] = {}

    def run(app: str, **options: object) -> None:
        folder = Path(os.environ[MULTIPROC_ENV])
        seen.update(options, app=app, settings=Settings(), folder=folder, existed=folder.is_dir())

    monkeypatch.setattr(serve_cli, "build_pipeline", lambda settings: Built())
    monkeypatch.setattr(uvicorn, "run", run)
    environment = dict(os.environ)
    result = runner.invoke(app, [
        "serve", "--workers", "3", "--session-store", "redis", "--redis-url",
        "redis://10.0.0.7:6379/2", "--port", "8123", "--index", "shop", "--store", "local",
    ])
    assert result.exit_code == 0, result.output
    assert (seen["app"], seen["workers"], seen["factory"], seen["port"]) == (
        "plugin.cli.serve:worker_app", 3, True, 8123)
    settings = seen["settings"]  # what a worker process reads from its environment
    assert isinstance(settings, Settings)
    assert (settings.session_store, settings.redis_url, settings.port, settings.index) == (
        "redis", "redis://10.0.0.7:6379/2", 8123, "shop")
    assert settings.indexer.store == "local"
    folder = seen["folder"]
    assert seen["existed"] and isinstance(folder, Path) and not folder.exists()
    assert dict(os.environ) == environment  # this process's environment is as it was


def test_a_bad_setting_from_the_environment_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPRANK_STORE", "elastic")
    result = runner.invoke(app, ["search", "shoes", "--opensearch-url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1, result.output
    assert "store" in result.output and "'elastic'" in result.output
    assert "validation error" not in result.output


def _commands(command: click.Command) -> list[click.Command]:
    if isinstance(command, click.Group):
        return [command, *(c for sub in command.commands.values() for c in _commands(sub))]
    return [command]


def test_every_option_has_help_text() -> None:
    missing = [
        f"{command.name} {param.opts[0]}"
        for command in _commands(typer.main.get_command(app))
        for param in command.params
        if isinstance(param, click.Option) and not param.help
    ]
    assert missing == []


def test_the_typed_choices_are_the_settings_choices() -> None:
    assert {c.value for c in StoreChoice} == set(
        get_args(IndexerSettings.model_fields["store"].annotation)
    )
    assert {c.value for c in RerankerChoice} == set(get_args(RerankerKind))
    assert {c.value for c in SessionStoreChoice} == set(get_args(SessionStoreKind))
    assert {c.value for c in ModeChoice} == set(RETRIEVAL_MODES)
    assert [c.value for c in StageChoice] == list(STAGES)
    assert {c.value for c in ProtocolChoice} == set(get_args(EvalProtocol))
    help_text = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "onnx|cross-encoder|triton|none" in help_text and "memory|redis" in help_text


class FakeEncoder:
    """Encodes any text as a fixed unit vector; needs no model."""

    document_backend = "torch"
    stamp = EncoderStamp(identity="fake", fingerprint="fake", max_seq_length=8)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return axis_vectors(len(texts))


def test_reindex_reports_each_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = tmp_path / "c.jsonl"
    catalog.write_text('{"id": "a", "title": "red shoes"}\n{"id": "b", "title": "blue hat"}\n')
    monkeypatch.setattr(index_cli, "build_encoder", lambda settings: FakeEncoder())
    result = runner.invoke(app, ["reindex", "--catalog", str(catalog)])
    assert result.exit_code == 0, result.output
    lines = [line.split(":")[0] for line in result.output.splitlines()]
    assert lines[:4] == ["validate", "embed texts", "embed titles", "write files and BM25"]
    assert "embed texts: 2 in " in result.output
    assert "\x1b" not in result.output  # plain lines when the output is not a terminal
