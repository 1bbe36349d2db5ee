"""The client's contract module and the model repository's config.pbtxt say the same thing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reranker.triton_contract import INPUTS, MAX_PAIRS, MODEL_FILE, MODEL_NAME, OUTPUT
from tests.conftest import REPO

MODEL_DIR = REPO / "triton_models" / MODEL_NAME
CONFIGS = [MODEL_DIR / "config.pbtxt", MODEL_DIR / "configs" / "gpu.pbtxt"]


def _tensors(text: str, section: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, dims) of each tensor in an ``input [...]`` or ``output [...]`` section."""
    body = re.search(rf"^{section}\s*\[(.*?)^\]", text, re.S | re.M)
    assert body, f"no {section} section"
    found = []
    for block in re.findall(r"\{(.*?)\}", body.group(1), re.S):
        name = re.search(r'name:\s*"([^"]+)"', block)
        dtype = re.search(r"data_type:\s*TYPE_(\w+)", block)
        dims = re.search(r"dims:\s*\[([^\]]*)\]", block)
        assert name and dtype and dims, block
        found.append((name.group(1), dtype.group(1),
                      tuple(int(d) for d in dims.group(1).split(","))))
    return found


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_config_matches_the_contract(config: Path) -> None:
    text = config.read_text(encoding="utf-8")
    assert re.search(r'^backend:\s*"python"', text, re.M)
    assert int(re.search(r"^max_batch_size:\s*(\d+)", text, re.M).group(1)) == MAX_PAIRS  # type: ignore[union-attr]
    assert "dynamic_batching" in text
    assert _tensors(text, "input") == [(s.name, s.dtype, s.dims) for s in INPUTS]
    # STRING would mean BYTES tensors, which fail in Triton 2.51's Python backend with numpy 2.
    assert _tensors(text, "output") == [(OUTPUT.name, OUTPUT.dtype, OUTPUT.dims)]


def _without_device(text: str) -> str:
    """The config less comments, its instance group and its precision parameter."""
    text = re.sub(r"#[^\n]*", "", text)
    text = re.sub(r"instance_group\s*\[.*?\]", "", text, flags=re.S)
    text = re.sub(r'parameters:?\s*\{\s*key:\s*"precision".*?\}\s*\}', "", text, flags=re.S)
    return " ".join(text.split())


def test_the_variants_differ_only_where_a_gpu_needs_it() -> None:
    cpu, gpu = (path.read_text(encoding="utf-8") for path in CONFIGS)
    assert "KIND_CPU" in cpu and "KIND_GPU" in gpu
    assert re.search(r'key:\s*"precision".*?string_value:\s*"fp16"', gpu, re.S)
    assert _without_device(cpu) == _without_device(gpu)


def test_the_model_template_exists_beside_its_config() -> None:
    assert (MODEL_DIR / MODEL_FILE).is_file()
