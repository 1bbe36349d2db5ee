"""A faster student: the packaged cross-encoder distilled into fewer of its own layers.

    python3 -m bench.student --layers 0,2,4 --work /tmp/student/l3 \\
        --groups runs/reranker.work/groups-esci-us-...jsonl.gz \\
        --catalog ../shared/data/esci-us/products.jsonl.gz \\
        --groups runs/reranker.work/groups-icecat-...jsonl.gz \\
        --catalog ../shared/data/icecat/products.jsonl.gz

The groups are the training groups `bash bench/train_reranker.sh` wrote (pseudo-queries and
their hybrid candidates; no judgment). The teacher (the packaged model, merged) scores every
member once; the student starts from the teacher's weights with only ``--layers`` of its six
transformer layers kept, and learns the teacher's logits (squared error, so the final stage
fitted on the teacher reads the student unchanged). The word embeddings stay frozen. The
student is written to ``WORK/model`` as a full checkpoint with a model card, which
`bench.reranker_eval --checkpoint` scores (``--reranker onnx`` exports it to INT8 as it does
the packaged one). Resumable: a stopped run goes on from ``WORK/train``'s checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from indexer.catalog import load_catalog
from indexer.model_files import MODEL_CARD
from indexer.schema import product_to_text
from plugin.components import PACKAGED_RERANKER
from reranker.cross_encoder import InProcessCrossEncoder, inner_model, read_model_card
from reranker.distillation import DistillGroup, load_groups
from reranker.listwise import ListwiseConfig, train_listwise

logger = logging.getLogger(__name__)


def teacher_groups(
    groups: list[DistillGroup], texts: dict[str, str], teacher: InProcessCrossEncoder,
    cache: Path,
) -> list[DistillGroup]:
    """The groups with the teacher's logits as their targets (cached in ``cache``)."""
    import math

    if cache.is_file():
        logits = json.loads(cache.read_text())
    else:
        started = time.perf_counter()
        logits = []
        for n, group in enumerate(groups):
            scores = teacher.score(group.query, [texts[pid] for pid in group.product_ids])
            logits.append([math.log(max(s, 1e-7) / max(1 - s, 1e-7)) for s in scores])
            if n % 500 == 0:
                logger.warning("teacher: %d/%d groups, %.0f s", n, len(groups),
                               time.perf_counter() - started)
        cache.write_text(json.dumps(logits))
    return [DistillGroup(g.query, g.kind, g.catalog, g.product_ids, tuple(z))
            for g, z in zip(groups, logits, strict=True)]


def make_student(teacher: InProcessCrossEncoder, layers: list[int], out: Path) -> None:
    """The teacher (merged) with only ``layers`` of its encoder kept, saved as a full model."""
    import torch

    model = teacher.model
    network: Any = inner_model(model)
    encoder = network.bert.encoder
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in layers])
    network.config.num_hidden_layers = len(layers)
    model.save_pretrained(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=Path, action="append", required=True)
    parser.add_argument("--catalog", type=Path, action="append", required=True)
    parser.add_argument("--layers", default="0,2,4", help="teacher layers the student keeps")
    parser.add_argument("--groups-used", type=int, default=4000,
                        help="train on this many groups (drawn with the seed)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    import random

    layers = [int(x) for x in args.layers.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    groups = [g for path in args.groups for g in load_groups(path)]
    random.Random(args.seed).shuffle(groups)
    groups = groups[: args.groups_used]
    wanted = {pid for g in groups for pid in g.product_ids}
    texts = {p.id: product_to_text(p) for path in args.catalog
             for p in load_catalog(path).products if p.id in wanted}
    teacher = InProcessCrossEncoder(PACKAGED_RERANKER)
    groups = teacher_groups(groups, texts, teacher, args.work / "teacher.json")
    init = args.work / "init"
    if not (init / "config.json").is_file():
        make_student(InProcessCrossEncoder(PACKAGED_RERANKER), layers, init)
    card = read_model_card(PACKAGED_RERANKER)
    assert card is not None
    config = ListwiseConfig(lora=False, init=str(init), loss="mse", freeze_embeddings=True,
                            epochs=args.epochs, learning_rate=5e-5, max_length=card.max_length,
                            seed=args.seed, batch_groups=8)
    model, result = train_listwise(groups, texts.__getitem__, config, args.work / "train",
                                   data_key=f"{len(groups)} groups, layers {layers}")
    out = args.work / "model"
    model.save_pretrained(str(out))
    student_card = card.model_copy(update={
        "mode": "full",
        "config": {**config.model_dump(mode="json"), "layers": layers},
        "training_seconds": round(result.seconds, 2),
        "data": {"groups": len(groups), "pairs": result.pairs,
                 "teacher": "plugin/artifacts/reranker", "loss": "mse on teacher logits"},
    })
    (out / MODEL_CARD).write_text(student_card.model_dump_json(indent=2) + "\n")
    print(f"student with layers {layers}: {result.pairs} pairs in {result.seconds:.0f} s "
          f"({result.pairs_per_second:.1f} pairs/s), last losses "
          f"{[round(x, 4) for x in result.losses[-5:]]}; written to {out}")


if __name__ == "__main__":
    main()
