"""The cross-encoder exported to ONNX scores what the in-process reranker scores.

fp32 within 1e-4, INT8 within 0.02 and in the same order wherever fp32 separates two products
clearly; a LoRA artifact exports like a full checkpoint; anything else is refused by name.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import spearmanr

from indexer.batching import length_batches, padded_tokens
from indexer.model_files import packaged_model_path
from indexer.onnx_files import INT8_MODEL, ONNX_CARD, ONNX_MODEL
from indexer.schema import Product, product_to_text
from reranker.base import Reranker
from reranker.cross_encoder import InProcessCrossEncoder, inner_model, packaged_cross_encoder
from reranker.errors import CheckpointError
from reranker.onnx_cross_encoder import OnnxCrossEncoder
from reranker.onnx_export import export_onnx
from tests.conftest import demo_slice

QUERY = "stainless steel water bottle"


@given(st.lists(st.integers(min_value=1, max_value=512), max_size=80),
       st.integers(min_value=1, max_value=40))
def test_length_batches_hold_every_index_once_longest_first(
    lengths: list[int], batch_size: int
) -> None:
    batches = length_batches(lengths, batch_size)
    flat = list(itertools.chain.from_iterable(batches))
    assert sorted(flat) == list(range(len(lengths)))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    assert len(batches) == -(-len(lengths) // batch_size)  # as many batches as unsorted
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_length_batches_by_hand() -> None:
    assert length_batches([3, 9, 4, 9, 1], 2) == [[1, 3], [2, 0], [4]]
    assert padded_tokens([3, 9, 4, 9, 1], [[1, 3], [2, 0], [4]]) == 18 + 8 + 1
    with pytest.raises(ValueError, match="batch_size"):
        length_batches([1], 0)


def test_a_bi_encoder_is_refused_before_anything_loads(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a one-label cross-encoder"):
        export_onnx(packaged_model_path(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_constructor_loads_nothing_and_a_non_export_is_a_clear_error(
    tmp_path: Path,
) -> None:
    reranker = OnnxCrossEncoder(tmp_path)
    assert isinstance(reranker, Reranker) and reranker.name == f"onnx-int8:{tmp_path.name}"
    assert reranker.score(QUERY, []) == []
    with pytest.raises(CheckpointError, match=f"{ONNX_CARD} is missing"):
        reranker.score(QUERY, ["a bottle"])


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real products of very different lengths (titles only up to full descriptions)."""
    products = [Product.model_validate(record) for record in demo_slice(40)]
    full = [product_to_text(p) for p in products[:20]]
    return full + [p.title for p in products[20:]] + ["Insulated stainless steel water bottle"]


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged weights with a head spread wide enough that scores differ clearly."""
    import torch

    model = packaged_cross_encoder(max_length=96)
    torch.manual_seed(3)
    torch.nn.init.normal_(inner_model(model).classifier.weight, std=0.5)
    folder = tmp_path_factory.mktemp("onnx") / "ce-full"
    model.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def full_export(full_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(full_checkpoint, tmp_path_factory.mktemp("onnx") / "ce-full-onnx")


@pytest.mark.slow
def test_the_export_folder_holds_both_graphs_the_tokenizer_and_a_card(
    full_export: Path, full_checkpoint: Path
) -> None:
    names = {p.name for p in full_export.iterdir()}
    assert {ONNX_MODEL, INT8_MODEL, ONNX_CARD, "tokenizer.json"} <= names
    assert not [p for p in full_export.parent.iterdir() if ".partial" in p.name]
    card = json.loads((full_export / ONNX_CARD).read_text())
    assert card["kind"] == "cross-encoder" and card["source_mode"] == "full"
    assert card["source"] == str(full_checkpoint.resolve())
    # No tuning card: the in-process default length, as `InProcessCrossEncoder` would use.
    assert card["max_length"] == 256 and card["activation"] == "sigmoid"
    assert card["int8"]["weight_type"] == "QInt8"
    # INT8 weights: about a quarter of the fp32 file.
    assert card["files"][INT8_MODEL] < card["files"][ONNX_MODEL] / 3


def assert_same_order_where_apart(got: list[float], expected: list[float], gap: float) -> None:
    for i, j in itertools.combinations(range(len(expected)), 2):
        if abs(expected[i] - expected[j]) > gap:
            assert (got[i] > got[j]) == (expected[i] > expected[j]), (i, j)


@pytest.mark.slow
def test_fp32_matches_in_process_and_int8_keeps_the_order(
    full_export: Path, full_checkpoint: Path, texts: list[str]
) -> None:
    expected = InProcessCrossEncoder(full_checkpoint).score(QUERY, texts)
    fp32 = OnnxCrossEncoder(full_export, precision="fp32", batch_size=8).score(QUERY, texts)
    int8 = OnnxCrossEncoder(full_export, batch_size=8).score(QUERY, texts)
    assert fp32 == pytest.approx(expected, abs=1e-4)
    assert max(expected) - min(expected) > 0.3  # the example separates products
    # This random head is spread wide (std 0.5, a trained one is far narrower), which
    # magnifies quantization error; the tuned LoRA artifact below is held to 0.02.
    assert int8 == pytest.approx(expected, abs=0.05)
    assert_same_order_where_apart(int8, expected, gap=0.1)
    assert spearmanr(int8, expected).statistic > 0.95


@pytest.mark.slow
def test_scores_come_back_in_input_order_whatever_the_batching(
    full_export: Path, texts: list[str]
) -> None:
    reranker = OnnxCrossEncoder(full_export, precision="fp32", batch_size=3)
    scores = reranker.score(QUERY, texts)
    alone = [reranker.score(QUERY, [text])[0] for text in texts]
    assert scores == pytest.approx(alone, abs=1e-5)  # padding to a batch changes nothing
    reversed_scores = reranker.score(QUERY, texts[::-1])
    assert reversed_scores[::-1] == pytest.approx(scores, abs=1e-6)
    reranker.close()
    assert OnnxCrossEncoder(full_export, precision="fp32", batch_size=64).score(
        QUERY, texts
    ) == pytest.approx(scores, abs=1e-5)


@pytest.mark.slow
def test_an_export_never_overwrites(full_checkpoint: Path, full_export: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in full_export.iterdir()}
    with pytest.raises(CheckpointError, match="already exists"):
        export_onnx(full_checkpoint, full_export)
    assert {p.name: p.stat().st_mtime_ns for p in full_export.iterdir()} == before


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) `tune reranker` LoRA artifact."""
    from reranker.tuning import CrossEncoderTuneConfig, tune_cross_encoder

    products = [Product.model_validate(record) for record in demo_slice(60)]
    ids = [p.id for p in products]
    queries = {f"q{i}": " ".join(products[i].title.split()[:5]) for i in range(6)}
    qrels = {f"q{i}": {ids[i]: 3, ids[i + 1]: 0} for i in range(6)}
    config = CrossEncoderTuneConfig(
        epochs=1, batch_size=8, max_length=64, negatives_per_query=3, validation_fraction=0.34,
        validation_depth=10, seed=1,
    )
    out = tmp_path_factory.mktemp("onnx") / "ce-lora"
    tune_cross_encoder({p.id: p for p in products}, queries, qrels,
                       {qid: ids[:20] for qid in queries}, out, config)
    return out


@pytest.mark.slow
def test_a_lora_artifact_exports_with_its_card_and_scores_as_in_process(
    lora_checkpoint: Path, tmp_path: Path, texts: list[str]
) -> None:
    out = export_onnx(lora_checkpoint, tmp_path / "ce-lora-onnx")
    card = json.loads((out / ONNX_CARD).read_text())
    assert card["source_mode"] == "lora" and card["max_length"] == 64
    assert (out / "model_card.json").read_bytes() == (
        lora_checkpoint / "model_card.json"
    ).read_bytes()
    expected = InProcessCrossEncoder(lora_checkpoint).score(QUERY, texts)
    fp32 = OnnxCrossEncoder(out, precision="fp32").score(QUERY, texts)
    int8 = OnnxCrossEncoder(out).score(QUERY, texts)
    assert fp32 == pytest.approx(expected, abs=1e-4)
    assert int8 == pytest.approx(expected, abs=0.02)


@pytest.mark.slow
def test_without_int8_asking_for_it_is_a_clear_error(
    full_checkpoint: Path, tmp_path: Path
) -> None:
    out = export_onnx(full_checkpoint, tmp_path / "fp32-only", int8=False)
    assert not (out / INT8_MODEL).exists()
    assert json.loads((out / ONNX_CARD).read_text())["int8"] is None
    with pytest.raises(CheckpointError, match=f"no {INT8_MODEL}"):
        OnnxCrossEncoder(out).score(QUERY, ["a bottle"])


@pytest.mark.slow
def test_the_cli_exports_and_the_server_settings_load_it(
    full_checkpoint: Path, tmp_path: Path, texts: list[str]
) -> None:
    from typer.testing import CliRunner

    from plugin.cli import app
    from plugin.components import build_reranker
    from plugin.settings import Settings

    out = tmp_path / "onnx"
    result = CliRunner().invoke(
        app, ["export", "onnx", "--checkpoint", str(full_checkpoint), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "--reranker onnx" in result.output
    reranker = build_reranker(Settings(reranker="onnx", reranker_checkpoint=out))
    assert reranker.name.startswith("onnx-int8")
    scores = reranker.score("usb c charger", texts[:3])
    assert len(scores) == 3 and all(0.0 <= score <= 1.0 for score in scores)

    # SHOPRANK_RERANKER_MAX_LENGTH: past 24 tokens of the pair, the product text is not read
    text = "Insulated stainless steel water bottle" + " with a bamboo lid" * 4
    longer = text + " that keeps drinks cold for a whole day"
    short = build_reranker(
        Settings(reranker="onnx", reranker_checkpoint=out, reranker_max_length=24)
    )
    assert short.max_length == 24 and reranker.max_length == 256  # the export's
    assert short.score(QUERY, [text]) == short.score(QUERY, [longer])
    assert reranker.score(QUERY, [text]) != reranker.score(QUERY, [longer])
    missing = CliRunner().invoke(
        app, ["export", "onnx", "--checkpoint", str(tmp_path / "nope"),
              "--out", str(tmp_path / "x")],
    )
    assert missing.exit_code == 2
