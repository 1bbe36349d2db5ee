"""The reranker on the real Triton server that scripts/test starts (see scripts/triton).

A tuned LoRA artifact and a full checkpoint are exported into the served model repository as
new versions and loaded through Triton's model control, without a restart. Triton must then
score exactly what the in-process reranker scores for the same checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from indexer.encoder import BiEncoder
from indexer.indexing import index_products
from indexer.local_store import LocalStore
from indexer.schema import Product, product_to_text
from plugin.api import create_app
from plugin.cli import app as cli
from plugin.models import SearchRequest
from plugin.pipeline import SearchPipeline
from plugin.search_plan import SearchSettings
from plugin.settings import Settings
from reranker.cross_encoder import InProcessCrossEncoder, inner_model, packaged_cross_encoder
from reranker.triton import CircuitBreaker, TritonReranker
from reranker.triton_contract import MODEL_NAME
from reranker.tuning import CrossEncoderTuneConfig, tune_cross_encoder
from tests.conftest import REPO, demo_slice
from tests.plugin.fault_harness import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# scripts/test starts a server of their own for these tests, on a scratch repository.
TRITON_URL = os.environ.get("SHOPRANK_TRITON_URL", "http://127.0.0.1:18000")
REPOSITORY = Path(
    os.environ.get("SHOPRANK_TRITON_REPOSITORY", REPO / ".cache" / "triton-test" / "models")
)


@pytest.fixture(scope="module")
def products() -> list[Product]:
    return [Product.model_validate(record) for record in demo_slice(60)]


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged weights with a head spread wide enough that scores differ clearly."""
    import torch

    model = packaged_cross_encoder(max_length=96)
    torch.manual_seed(3)
    head = inner_model(model).classifier
    torch.nn.init.normal_(head.weight, std=0.5)
    folder = tmp_path_factory.mktemp("triton") / "ce-full"
    model.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory: pytest.TempPathFactory, products: list[Product]) -> Path:
    """A real (tiny) `tune reranker` LoRA artifact."""
    ids = [p.id for p in products]
    queries = {f"q{i}": " ".join(products[i].title.split()[:5]) for i in range(6)}
    qrels = {f"q{i}": {ids[i]: 3, ids[i + 1]: 0} for i in range(6)}
    candidates = {qid: ids[:20] for qid in queries}
    config = CrossEncoderTuneConfig(
        epochs=1, batch_size=8, max_length=64, negatives_per_query=3, validation_fraction=0.34,
        validation_depth=10, seed=1,
    )
    out = tmp_path_factory.mktemp("triton") / "ce-lora"
    tune_cross_encoder({p.id: p for p in products}, queries, qrels, candidates, out, config)
    return out


@pytest.fixture
def client() -> Iterator[TritonReranker]:
    reranker = TritonReranker(TRITON_URL, timeout_seconds=60)
    yield reranker
    reranker.close()


def _export(checkpoint: Path) -> str:
    result = CliRunner().invoke(cli, [
        "export", "reranker", "--checkpoint", str(checkpoint), "--repository", str(REPOSITORY),
        "--triton-url", TRITON_URL,
    ])
    assert result.exit_code == 0, result.output
    assert "now serves version" in result.output, result.output
    return result.output


def test_a_fresh_repository_serves_the_packaged_cross_encoder_as_version_1(
    products: list[Product], tmp_path: Path
) -> None:
    """scripts/test copies triton_models/ without any version; `scripts/triton start` adds the
    packaged cross-encoder as version 1, so `--reranker triton` answers with no export step,
    not degraded, scoring what the in-process packaged reranker scores. (First in this file:
    the tests below export newer versions.)"""
    from plugin.components import PACKAGED_RERANKER, build_pipeline

    versions = [p.name for p in (REPOSITORY / MODEL_NAME).iterdir() if p.name.isdigit()]
    assert versions == ["1"]
    assert (REPOSITORY / MODEL_NAME / "1" / "checkpoint" / "model_card.json").is_file()
    texts = [product_to_text(p) for p in products[:30]]
    served = TritonReranker(TRITON_URL, checkpoint=PACKAGED_RERANKER, timeout_seconds=60)
    try:
        remote = served.score("stainless steel water bottle", texts)
    finally:
        served.close()
    local = InProcessCrossEncoder(PACKAGED_RERANKER).score("stainless steel water bottle", texts)
    assert np.max(np.abs(np.array(remote) - np.array(local))) <= 1e-4

    settings = Settings(reranker="triton", triton_url=TRITON_URL, index="triton-default")
    index_products(LocalStore(settings.index_root), products, BiEncoder())
    response = build_pipeline(settings).search(SearchRequest(query="water bottle", k=5))
    assert not response.degraded and response.reranked > 0
    assert response.reranker.startswith("triton")


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_triton_scores_equal_in_process_scores(
    kind: str, request: pytest.FixtureRequest, products: list[Product]
) -> None:
    checkpoint: Path = request.getfixturevalue(f"{kind}_checkpoint")
    _export(checkpoint)
    texts = [product_to_text(p) for p in products[:40]]
    queries = ["stainless steel water bottle", "usb c charging cable for phone", "dress"]
    served = TritonReranker(TRITON_URL, checkpoint=checkpoint, timeout_seconds=60)
    local = InProcessCrossEncoder(checkpoint)
    try:
        # Concurrent requests of different sizes and lengths share the dynamic batcher.
        with ThreadPoolExecutor(4) as pool:
            remote = list(pool.map(lambda i: served.score(queries[i % 3], texts[: 10 + 10 * i]),
                                   range(4)))
        for i, scores in enumerate(remote):
            expected = local.score(queries[i % 3], texts[: 10 + 10 * i])
            assert np.max(np.abs(np.array(scores) - np.array(expected))) <= 1e-4
        assert np.std(remote[-1]) > 1e-3  # a model that says something, not a constant
    finally:
        served.close()


def test_length_buckets_score_what_one_padded_pass_scores(
    full_checkpoint: Path, products: list[Product]
) -> None:
    """The model reloaded with ``length_buckets`` (one forward pass per bucket, as
    bench/triton_gpu.sh measures it) scores what the in-process reranker scores."""
    import json

    from tritonclient.http import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    _export(full_checkpoint)
    http = InferenceServerClient(TRITON_URL.removeprefix("http://"))
    original = http.get_model_config(MODEL_NAME)

    def reload(buckets: str) -> None:
        config = json.loads(json.dumps(original))
        config.setdefault("parameters", {})["length_buckets"] = {"string_value": buckets}
        http.load_model(MODEL_NAME, config=json.dumps(config))

    texts = [p.title for p in products[:20]] + [product_to_text(p) for p in products[20:40]]
    queries = ["stainless steel water bottle", "dress"]
    served = TritonReranker(TRITON_URL, checkpoint=full_checkpoint, timeout_seconds=60)
    local = InProcessCrossEncoder(full_checkpoint)
    try:
        with pytest.raises(InferenceServerException, match="length_buckets"):
            reload("short,long")
        reload("16,32,64")
        with ThreadPoolExecutor(2) as pool:  # requests joined by the batcher, then bucketed
            remote = list(pool.map(lambda q: served.score(q, texts), queries))
        for query, scores in zip(queries, remote, strict=True):
            expected = local.score(query, texts)
            assert np.max(np.abs(np.array(scores) - np.array(expected))) <= 1e-4
    finally:
        served.close()
        http.load_model(MODEL_NAME, config=json.dumps(original))
        http.close()


def test_a_bad_request_gets_its_own_error_and_the_batch_still_answers(
    client: TritonReranker, full_checkpoint: Path
) -> None:
    from tritonclient.http import InferenceServerClient, InferInput
    from tritonclient.utils import InferenceServerException

    _export(full_checkpoint)
    good = client.encode("water bottle", ["steel bottle", "glass bottle"])
    bad = {name: array.copy() for name, array in good.items()}
    bad["input_ids"][0, 1] = 10_000_000  # beyond the vocabulary

    def send(tensors: dict[str, np.ndarray]) -> np.ndarray:
        http = InferenceServerClient(TRITON_URL.removeprefix("http://"))
        inputs = []
        for name, array in tensors.items():
            item = InferInput(name, list(array.shape), "INT64")
            item.set_data_from_numpy(array)
            inputs.append(item)
        return http.infer(MODEL_NAME, inputs).as_numpy("scores")

    with ThreadPoolExecutor(2) as pool:
        bad_result = pool.submit(send, bad)
        good_result = pool.submit(send, good)
        assert good_result.result().shape == (2, 1)
        with pytest.raises(InferenceServerException, match="input_ids"):
            bad_result.result()
    # Padding in front of the pairs: length buckets would cut real tokens, so it is refused.
    left_padded = {name: np.pad(array, ((0, 0), (1, 0))) for name, array in good.items()}
    with pytest.raises(InferenceServerException, match=r"attention_mask.*padded on the right"):
        send(left_padded)


def _triton(command: str, env: dict[str, str]) -> None:
    subprocess.run([str(REPO / "scripts" / "triton"), command], env=env, check=True,
                   capture_output=True, timeout=300)


def test_search_degrades_while_triton_is_down_and_recovers_by_itself(
    tmp_path: Path, products: list[Product], full_checkpoint: Path
) -> None:
    """Its own server (other ports), so the shared one keeps serving the other tests."""
    from reranker.triton_export import export_reranker

    repository = tmp_path / "models"
    (repository / MODEL_NAME).mkdir(parents=True)
    for name in ("config.pbtxt", "model.py"):
        (repository / MODEL_NAME / name).write_bytes(
            (REPO / "triton_models" / MODEL_NAME / name).read_bytes()
        )
    export_reranker(full_checkpoint, repository)
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    env = {
        **os.environ, "SHOPRANK_TRITON_REPOSITORY": str(repository),
        "SHOPRANK_TRITON_RUN_DIR": str(tmp_path / "run"),
        "SHOPRANK_TRITON_HTTP_PORT": str(port), "SHOPRANK_TRITON_GRPC_PORT": str(grpc_port),
        "SHOPRANK_TRITON_METRICS_PORT": str(metrics_port),
    }
    store = LocalStore(tmp_path / "idx")
    encoder = BiEncoder()
    index_products(store, products, encoder)
    reranker = TritonReranker(
        f"http://127.0.0.1:{port}", timeout_seconds=5,
        breaker=CircuitBreaker(failures=2, reset_seconds=1.0),
    )
    pipeline = SearchPipeline(store, encoder, reranker,
                              settings=SearchSettings(candidates=30, rerank_window=20))
    app = create_app(Settings(), pipeline)
    body = {"query": "water bottle", "k": 10}
    _triton("start", env)
    try:
        with TestClient(app) as http:
            first = http.post("/search", json=body)
            assert first.status_code == 200 and not first.json()["degraded"]
            assert first.json()["reranked"] == 20

            _triton("stop", env)
            for _ in range(5):  # the first calls fail, then the circuit skips the server
                down = http.post("/search", json=body)
                assert down.status_code == 200 and down.json()["degraded"]
                assert down.json()["reranked"] == 0 and len(down.json()["results"]) == 10
            metrics = {
                (sample.name, sample.labels.get("reason")): sample.value
                for family in text_string_to_metric_families(http.get("/metrics").text)
                for sample in family.samples
            }
            assert sum(value for (name, _), value in metrics.items()
                       if name == "shoprank_search_degraded_total") == 5
            assert metrics["shoprank_search_degraded_total", "circuit_open"] >= 1
            assert metrics["shoprank_reranker_circuit_open", None] == 1

            _triton("start", env)
            deadline = time.monotonic() + 60
            while http.post("/search", json=body).json()["degraded"]:
                assert time.monotonic() < deadline, "search did not recover after a restart"
                time.sleep(0.5)
    finally:
        _triton("stop", env)
