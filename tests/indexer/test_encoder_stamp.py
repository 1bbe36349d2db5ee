"""Encoder identity and fingerprint: computed from the files, without loading a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.encoder import BiEncoder
from indexer.encoder_stamp import EncoderStamp, encoder_fingerprint
from indexer.errors import IndexerError
from indexer.model_files import (
    ADAPTER_CONFIG,
    PACKAGED_BASE,
    PACKAGED_IDENTITY,
    packaged_model_path,
)
from tests.indexer.encoder_factories import fake_model


def test_the_packaged_encoder_is_named_and_stable() -> None:
    encoder = BiEncoder()
    assert encoder.is_packaged and encoder.identity == PACKAGED_IDENTITY
    assert encoder.fingerprint == BiEncoder().fingerprint
    assert len(encoder.fingerprint) == 16
    # Pointing at the packaged folder explicitly is the same encoder.
    explicit = BiEncoder(packaged_model_path())
    assert explicit.is_packaged and explicit.stamp == encoder.stamp
    assert encoder.stamp.path is None


def test_the_fingerprint_follows_weights_and_truncation(tmp_path: Path) -> None:
    a = fake_model(tmp_path / "a")
    b = fake_model(tmp_path / "b")
    assert encoder_fingerprint(a, 128) == encoder_fingerprint(b, 128)  # same content
    assert encoder_fingerprint(a, 128) != encoder_fingerprint(a, 256)
    (b / "model.safetensors").write_bytes(b"tuned weights")
    assert encoder_fingerprint(a, 128) != encoder_fingerprint(b, 128)
    assert encoder_fingerprint(a, 128) != BiEncoder().fingerprint


def test_documentation_does_not_change_the_fingerprint(tmp_path: Path) -> None:
    folder = fake_model(tmp_path / "m")
    before = encoder_fingerprint(folder, 128)
    (folder / "README.md").write_text("# notes")
    (folder / "model_card.json").write_text("{}")
    assert encoder_fingerprint(folder, 128) == before


def test_identity_names_tuned_artifacts_by_folder(tmp_path: Path) -> None:
    plain = fake_model(tmp_path / "e5-small")
    tuned = fake_model(tmp_path / "shoes-lora")
    (tuned / "model_card.json").write_text("{}")
    assert BiEncoder(plain).identity == "e5-small"
    assert BiEncoder(tuned).identity == "tuned:shoes-lora"
    assert BiEncoder(tuned).stamp.path == str(tuned.resolve())


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(IndexerError, match="not found"):
        _ = BiEncoder(tmp_path / "nowhere").fingerprint


def test_stamp_round_trips_through_metadata() -> None:
    stamp = EncoderStamp("tuned:x", "0123456789abcdef", 128, "/models/x")
    assert EncoderStamp.from_meta(stamp.to_meta()) == stamp
    assert EncoderStamp.from_meta(None) is None
    with pytest.raises(IndexerError, match="unreadable encoder stamp"):
        EncoderStamp.from_meta({"identity": "x"})


def test_an_adapter_must_be_a_bi_encoder_adapter_of_the_packaged_model(tmp_path: Path) -> None:
    def adapter(name: str, config: dict[str, object]) -> Path:
        folder = fake_model(tmp_path / name)
        (folder / ADAPTER_CONFIG).write_text(json.dumps(config))
        return folder

    reranker = adapter("ce", {"base_model_name_or_path": PACKAGED_BASE, "task_type": "SEQ_CLS"})
    with pytest.raises(IndexerError, match="cross-encoder"):
        _ = BiEncoder(reranker).model
    elsewhere = adapter("other", {"base_model_name_or_path": "/models/bert-base"})
    with pytest.raises(IndexerError, match="bert-base"):
        _ = BiEncoder(elsewhere).model
    # An adapter's fingerprint covers its base: a new packaged model would make a new one.
    ours = adapter("ours", {"base_model_name_or_path": PACKAGED_BASE})
    assert BiEncoder(ours).identity == "tuned:ours"
    assert BiEncoder(ours).fingerprint != encoder_fingerprint(tmp_path / "other", 128)
