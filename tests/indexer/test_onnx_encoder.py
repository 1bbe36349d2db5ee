"""Queries and products encoded on ONNX Runtime land where torch puts them; the encoder
fingerprint does not change, and an index's stamp says which backend encoded its products."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer import onnx_encoder
from indexer.encoder import BiEncoder
from indexer.encoder_stamp import EncoderStamp
from indexer.errors import IndexerError
from indexer.model_files import packaged_model_path
from indexer.onnx_encoder import OnnxQueryEncoder, export_bi_encoder, query_export_folder
from indexer.onnx_files import INT8_MODEL, ONNX_CARD, ONNX_MODEL
from indexer.settings import IndexerSettings
from indexer.vectors import mean_pool_normalize
from plugin.components import build_encoder

QUERIES = [
    "usb c charger", "red running shoes for women size 8", "kitchen towels",
    "laptop stand adjustable aluminium", "noise cancelling headphones over ear",
    "t towels kitchen", "tan strappy heels for women", "4k monitor 27 inch ips",
]


def test_mean_pooling_skips_padding_and_normalises() -> None:
    tokens = np.array([[[3.0, 4.0], [9.0, 9.0]], [[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)
    mask = np.array([[1, 0], [1, 1]])
    got = mean_pool_normalize(tokens, mask)
    assert got == pytest.approx(np.array([[0.6, 0.8], [2**-0.5, 2**-0.5]]), abs=1e-6)
    assert got.dtype == np.float32


def test_the_backend_is_a_setting_and_leaves_the_stamp_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert IndexerSettings().query_backend == "torch"
    monkeypatch.setenv("SHOPRANK_QUERY_BACKEND", "onnx-int8")
    settings = IndexerSettings()
    assert settings.query_backend == "onnx-int8"
    assert settings.onnx_cache_dir == settings.home / "cache" / "onnx"
    monkeypatch.setenv("SHOPRANK_QUERY_BACKEND", "tensorrt")
    with pytest.raises(ValueError, match="query_backend"):
        IndexerSettings()
    onnx = BiEncoder(query_backend="onnx-int8", onnx_cache_dir=tmp_path)
    assert onnx.stamp == BiEncoder().stamp  # nothing loaded, nothing exported
    assert not any(tmp_path.iterdir())


def test_the_document_backend_is_a_setting_recorded_in_the_stamp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert IndexerSettings().document_backend == "torch"
    monkeypatch.setenv("SHOPRANK_DOCUMENT_BACKEND", "onnx-int8")
    assert IndexerSettings().document_backend == "onnx-int8"
    # What `shoprank reindex` encodes with, and so what the index it writes records.
    assert build_encoder(IndexerSettings(home=tmp_path)).stamp.documents == "onnx-int8"
    monkeypatch.setenv("SHOPRANK_DOCUMENT_BACKEND", "onnx-fp16")
    with pytest.raises(ValueError, match="document_backend"):
        IndexerSettings()

    stamp = BiEncoder(document_backend="onnx-int8", onnx_cache_dir=tmp_path).stamp
    torch_stamp = BiEncoder().stamp
    assert stamp.fingerprint == torch_stamp.fingerprint  # comparable vectors
    assert (stamp.documents, torch_stamp.documents) == ("onnx-int8", "torch")
    assert "documents onnx-int8" in stamp.describe()
    assert EncoderStamp.from_meta(stamp.to_meta()) == stamp
    # Indexes written before the field existed were encoded with torch.
    old = {k: v for k, v in torch_stamp.to_meta().items() if k != "documents"}
    assert EncoderStamp.from_meta(old) == torch_stamp
    with pytest.raises(IndexerError, match="encoder stamp"):
        EncoderStamp.from_meta({**old, "documents": "tensorrt"})
    assert not any(tmp_path.iterdir())  # nothing exported until products are encoded


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def torch_encoder() -> BiEncoder:
    return BiEncoder(query_cache_size=0)


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "at_least"), [("onnx", 0.999), ("onnx-int8", 0.98)])
def test_onnx_query_vectors_match_torch(
    backend: str, at_least: float, cache: Path, torch_encoder: BiEncoder
) -> None:
    encoder = BiEncoder(query_backend=backend, onnx_cache_dir=cache)  # type: ignore[arg-type]
    cosines = [float(encoder.encode_query(q) @ torch_encoder.encode_query(q)) for q in QUERIES]
    assert min(cosines) >= at_least
    assert np.mean(cosines) >= (0.999 if backend == "onnx" else 0.99)
    vector = encoder.encode_query(QUERIES[0])
    assert vector.shape == (384,) and vector.dtype == np.float32
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
    # Documents still go through torch.
    assert encoder.encode_texts(QUERIES[:2]) == pytest.approx(
        torch_encoder.encode_texts(QUERIES[:2]), abs=1e-6
    )


@pytest.mark.slow
def test_int8_product_vectors_match_torch_in_input_order(
    cache: Path, torch_encoder: BiEncoder
) -> None:
    from indexer.catalog import load_catalog
    from indexer.schema import product_to_text

    demo = Path(__file__).parents[2] / "plugin" / "demo"
    products = load_catalog(next(demo.glob("*.jsonl.gz"))).products[:40]
    # Short and long texts mixed, so batches are cut by length and written back by index.
    texts = [product_to_text(p) if i % 2 else p.title for i, p in enumerate(products)]
    encoder = BiEncoder(document_backend="onnx-int8", batch_size=8, onnx_cache_dir=cache)
    got = encoder.encode_texts(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    assert np.linalg.norm(got, axis=1) == pytest.approx(np.ones(len(texts)), abs=1e-5)
    cosines = (got * torch_encoder.encode_texts(texts)).sum(axis=1)
    assert cosines.min() >= 0.97 and cosines.mean() >= 0.985
    # Dynamic INT8 scales activations per batch, so a product's vector moves a little with its
    # batch mates, but each row is its own product's.
    alone = np.stack([encoder.onnx_document_encoder.encode([t])[0] for t in texts[:6]])
    assert (alone @ got.T).argmax(axis=1).tolist() == list(range(6))
    assert (alone * got[:6]).sum(axis=1).min() >= 0.98


@pytest.mark.slow
def test_fp32_product_vectors_are_torch_vectors(cache: Path, torch_encoder: BiEncoder) -> None:
    from indexer.catalog import load_catalog
    from indexer.schema import product_to_text

    demo = Path(__file__).parents[2] / "plugin" / "demo"
    products = load_catalog(next(demo.glob("*.jsonl.gz"))).products[:24]
    texts = [product_to_text(p) if i % 2 else p.title for i, p in enumerate(products)]
    encoder = BiEncoder(document_backend="onnx", batch_size=8, onnx_cache_dir=cache)
    assert encoder.stamp.documents == "onnx"
    assert EncoderStamp.from_meta(encoder.stamp.to_meta()) == encoder.stamp
    # the same arithmetic, up to float rounding
    np.testing.assert_allclose(
        encoder.encode_texts(texts), torch_encoder.encode_texts(texts), atol=2e-5
    )


@pytest.mark.slow
def test_product_backends_leave_torch_queries_on_torch(
    tmp_path: Path, torch_encoder: BiEncoder
) -> None:
    for backend in ("onnx-int8", "onnx"):
        encoder = BiEncoder(document_backend=backend, onnx_cache_dir=tmp_path)
        query = encoder.encode_query("usb c charger 65w")
        assert np.array_equal(query, torch_encoder.encode_texts(["usb c charger 65w"])[0])
    assert not any(tmp_path.iterdir())  # no export: products only need one


@pytest.mark.slow
def test_the_export_is_made_once_per_encoder_fingerprint(
    cache: Path, torch_encoder: BiEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    BiEncoder(query_backend="onnx-int8", onnx_cache_dir=cache).encode_query("warm up")
    folder = query_export_folder(cache, torch_encoder.fingerprint)
    assert {ONNX_MODEL, INT8_MODEL, ONNX_CARD} <= {p.name for p in folder.iterdir()}
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no partial folders left

    def no_second_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_encoder, "export_bi_encoder", no_second_export)
    again = BiEncoder(query_backend="onnx-int8", onnx_cache_dir=cache)
    assert again.encode_query("usb c charger").shape == (384,)
    assert again._model is None  # a cached export never loads torch

    # Another truncation length is another encoder: its own export.
    shorter = BiEncoder(max_seq_length=64, query_backend="onnx", onnx_cache_dir=cache)
    assert shorter.fingerprint != torch_encoder.fingerprint
    with pytest.raises(AssertionError, match="exported again"):
        shorter.encode_query("usb c charger")


@pytest.mark.slow
def test_pooling_other_than_mean_is_refused(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    model = SentenceTransformer(
        modules=[Transformer(str(packaged_model_path())), Pooling(384, pooling_mode="cls")]
    )
    with pytest.raises(IndexerError, match="mean pooling"):
        export_bi_encoder(model, tmp_path / "out", source="cls")
    assert not (tmp_path / "out").exists()


def test_a_folder_without_a_card_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IndexerError, match=f"{ONNX_CARD} is missing"):
        OnnxQueryEncoder(tmp_path).encode(["usb c charger"])
