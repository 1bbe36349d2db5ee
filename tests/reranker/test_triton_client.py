"""The Triton client without a server: timeouts, the circuit breaker (tested itself in
`tests/indexer/test_circuit.py`), failing open, export."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.circuit import CircuitBreaker
from indexer.indexing import index_products
from indexer.local_store import LocalStore
from plugin.cli import app as cli
from plugin.models import SearchRequest
from plugin.pipeline import SearchPipeline
from plugin.search_plan import SearchSettings
from reranker.errors import (
    UNAVAILABLE_CAUSES,
    CheckpointError,
    RerankerError,
    RerankerUnavailableError,
)
from reranker.triton import TritonReranker
from reranker.triton_contract import CHECKPOINT_DIR, MODEL_FILE, MODEL_NAME
from reranker.triton_export import export_reranker
from tests.conftest import REPO


def _dead_url() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_unreachable_server_is_unavailable_then_skipped_without_calling() -> None:
    reranker = TritonReranker(
        _dead_url(), timeout_seconds=1.0, breaker=CircuitBreaker(failures=2, reset_seconds=60)
    )
    try:
        assert not reranker.circuit_open
        for _ in range(2):
            with pytest.raises(RerankerUnavailableError, match=r"failed|did not answer") as e:
                reranker.score("shoes", ["red shoes"])
            assert e.value.cause in ("failed", "timeout")
        assert reranker.circuit_open
        with pytest.raises(RerankerUnavailableError, match="circuit open") as e:
            reranker.score("shoes", ["red shoes"])
        assert e.value.cause == "circuit_open"
        assert not reranker.ready()
    finally:
        reranker.close()


def test_tokens_match_what_the_model_expects() -> None:
    reranker = TritonReranker(_dead_url(), max_length=16)
    try:
        tensors = reranker.encode("red shoes", ["a pair of red running shoes " * 10, "socks"])
    finally:
        reranker.close()
    assert set(tensors) == {"input_ids", "attention_mask", "token_type_ids"}
    assert {t.shape for t in tensors.values()} == {(2, 16)}  # padded to the longest, truncated
    assert tensors["attention_mask"][1].sum() < 16
    assert all(t.dtype.name == "int64" for t in tensors.values())


def test_search_fails_open_to_retrieval_order_when_the_reranker_is_down(
    tiny_products: list, tmp_path: Path
) -> None:
    from indexer.encoder import BiEncoder

    store = LocalStore(tmp_path / "idx")
    index_products(store, tiny_products, BiEncoder())
    reranker = TritonReranker(_dead_url(), timeout_seconds=0.5)
    pipeline = SearchPipeline(store, BiEncoder(), reranker,
                              settings=SearchSettings(candidates=6, rerank_window=6))
    try:
        request = SearchRequest(query="running shoes", k=5)
        response = pipeline.search(request)
        plain = pipeline.search(request.model_copy(update={"rerank": False}))
    finally:
        reranker.close()
    assert response.degraded and not plain.degraded
    assert response.degraded_reason is not None and plain.degraded_reason is None
    assert response.degraded_reason.startswith("reranker skipped: reranker triton:")
    assert response.reranked == 0
    assert [hit.id for hit in response.results] == [hit.id for hit in plain.results]
    degraded = {sample.labels["reason"]: sample.value
                for family in pipeline.metrics.degraded.collect()
                for sample in family.samples if sample.name.endswith("_total")}
    assert sum(degraded.values()) == 1 and set(degraded) == set(UNAVAILABLE_CAUSES)


def _repository(tmp_path: Path) -> Path:
    repository = tmp_path / "models"
    (repository / MODEL_NAME).mkdir(parents=True)
    (repository / MODEL_NAME / MODEL_FILE).write_text("# model\n")
    return repository


def _full_checkpoint(tmp_path: Path) -> Path:
    checkpoint = tmp_path / "ce"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(
        {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}}
    ))
    return checkpoint


def test_export_writes_numbered_versions_with_the_model_code(tmp_path: Path) -> None:
    repository, checkpoint = _repository(tmp_path), _full_checkpoint(tmp_path)
    first = export_reranker(checkpoint, repository)
    second = export_reranker(checkpoint, repository)
    assert (first.version, second.version, second.mode) == (1, 2, "full")
    assert (second.folder / MODEL_FILE).read_text() == "# model\n"
    assert (second.folder / CHECKPOINT_DIR / "config.json").is_file()
    assert export_reranker(checkpoint, repository, version=7).folder.name == "7"
    with pytest.raises(CheckpointError, match="version 7 already exists"):
        export_reranker(checkpoint, repository, version=7)
    assert sorted(p.name for p in (repository / MODEL_NAME).iterdir()) == [
        "1", "2", "7", MODEL_FILE
    ]


def test_export_refuses_what_is_not_a_checkpoint_or_a_repository(tmp_path: Path) -> None:
    repository = _repository(tmp_path)
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        export_reranker(tmp_path, repository)
    encoder = REPO / "plugin" / "artifacts" / "encoder-esci-us"  # a bi-encoder LoRA artifact
    with pytest.raises(CheckpointError, match="not a cross-encoder"):
        export_reranker(encoder, repository)
    with pytest.raises(CheckpointError, match="not a shoprank model repository"):
        export_reranker(_full_checkpoint(tmp_path), tmp_path / "elsewhere")
    assert not (repository / MODEL_NAME / "1").exists()


def test_export_to_an_unreachable_triton_exits_1_naming_the_url(tmp_path: Path) -> None:
    """The README's promise for every command: an unreachable server exits with code 1 and a
    message naming its URL. The version is written all the same; a server started on the
    repository serves it."""
    repository, checkpoint, url = _repository(tmp_path), _full_checkpoint(tmp_path), _dead_url()
    result = CliRunner().invoke(cli, [
        "export", "reranker", "--checkpoint", str(checkpoint), "--repository", str(repository),
        "--triton-url", url,
    ])
    assert result.exit_code == 1, result.output
    assert f"no Triton answers at {url}" in " ".join(result.output.split())
    assert (repository / MODEL_NAME / "1" / MODEL_FILE).is_file()
    written = CliRunner().invoke(cli, [
        "export", "reranker", "--checkpoint", str(checkpoint), "--repository", str(repository),
        "--triton-url", url, "--no-load",
    ])
    assert written.exit_code == 0 and (repository / MODEL_NAME / "2").is_dir(), written.output


def test_a_url_with_another_scheme_is_refused_at_once() -> None:
    with pytest.raises(RerankerError, match="give http://host:port"):
        TritonReranker("https://127.0.0.1:8000")
