"""Pseudo-queries for the cross-encoder, its distillation groups and the resumable loop."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest

from indexer.schema import Product
from reranker.distillation import (
    DistillGroup,
    batches,
    load_groups,
    make_group,
    save_groups,
    standardised,
)
from reranker.distilled_tuning import reciprocal_rank, split_groups
from reranker.query_writer import (
    ProductFields,
    TypeVocabulary,
    near_duplicate,
    product_fields,
    queries_for,
    write_queries,
)
from tests.conftest import demo_slice


def _fields(pid: str, title: str, brand: str | None = None) -> ProductFields:
    return ProductFields(pid, title, brand, None, ())


def test_product_types_are_phrases_many_titles_share_never_colours_or_brands() -> None:
    titles = [(f"Acme laser printer LX-{i} black", "Acme") for i in range(6)]
    titles += [(f"Bolt black toner cartridge T{i}", "Bolt") for i in range(6)]
    vocabulary = TypeVocabulary.of(titles)
    types = vocabulary.types_of("Acme laser printer LX-9 black", "Acme")
    assert types[0] == "laser printer"
    assert not any("black" in t or "acme" in t or "lx" in t for t in types)


def test_every_query_kind_is_written_from_real_products_and_names_its_source() -> None:
    products = [Product.model_validate(row) for row in demo_slice(400)]
    fields = [product_fields(p) for p in products]
    queries = write_queries(fields, 300, seed=3)
    assert len(queries) == 300
    assert len({q.text for q in queries}) == 300
    kinds = Counter(q.kind.split("+")[0] for q in queries)
    assert set(kinds) == {"title_span", "product_type", "brand_type", "type_attribute",
                          "category"}
    assert {q.kind.split("+")[1] for q in queries if "+" in q.kind} == {"short", "typo"}
    by_id = {f.id: f for f in fields}
    assert all(q.product_id in by_id for q in queries)
    assert write_queries(fields, 300, seed=3) == queries  # the same for a seed


def test_chosen_kinds_are_the_only_ones_written_and_the_default_is_unchanged() -> None:
    fields = [product_fields(Product.model_validate(row)) for row in demo_slice(400)]
    chosen = write_queries(fields, 200, seed=3, kinds=("title_span", "brand_type"))
    assert len(chosen) == 200
    assert {q.kind.split("+")[0] for q in chosen} == {"title_span", "brand_type"}
    every = ("title_span", "product_type", "brand_type", "type_attribute", "category")
    assert write_queries(fields, 50, seed=3, kinds=every) == write_queries(fields, 50, seed=3)
    with pytest.raises(ValueError, match="colour"):
        write_queries(fields, 10, kinds=("title_span", "colour"))


def test_unknown_query_kinds_and_devices_are_refused_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from plugin.cli import app

    catalog = tmp_path / "products.jsonl"
    catalog.write_text("")
    base = ["tune", "reranker-distill", "--catalog", str(catalog), "--out", str(tmp_path / "o")]
    kinds = CliRunner().invoke(app, [*base, "--query-kinds", "title_span,colour"])
    assert kinds.exit_code == 2
    assert "--query-kinds" in kinds.output and "colour" in kinds.output
    assert "brand_type" in kinds.output  # the kinds to choose from
    device = CliRunner().invoke(app, [*base, "--device", "tpu"])
    assert device.exit_code == 2 and "--device 'tpu'" in device.output
    assert not (tmp_path / "o.work").exists()


def test_a_typo_changes_one_word_by_one_slip() -> None:
    vocabulary = TypeVocabulary.of([("wireless headphones", None)] * 6)
    product = _fields("1", "wireless headphones")
    queries = write_queries([product], 1, seed=0, short=0.0, typo=1.0)
    (query,) = queries
    assert query.kind.endswith("+typo")
    written = {q.text for q in queries_for(product, vocabulary, random.Random(0))}
    assert query.text not in written


def test_near_duplicates_of_the_source_never_enter_its_group() -> None:
    source = _fields("s", "Acme Trail Running Shoes Red Size 9")
    twin = _fields("t", "Acme Trail Running Shoes Red Size 10")
    others = [_fields(f"o{i}", f"Other product number {i}") for i in range(12)]
    assert near_duplicate(source, twin) and not near_duplicate(source, others[0])
    candidates = [twin, *others]
    scores = [5.0, *range(12)]
    group = make_group("trail shoes", "title_span", "demo", source, candidates, scores,
                       random.Random(0), group_size=6)
    assert group is not None
    assert group.product_ids[0] == "s" and "t" not in group.product_ids
    assert len(group.product_ids) == 7
    # The source is the known positive: its teacher score is the group's best.
    assert group.teacher[0] == max(group.teacher)


def test_targets_mix_the_label_and_the_teacher_and_sum_to_one() -> None:
    group = DistillGroup("q", "title_span", "c", ("s", "a", "b"), (2.0, 2.0, 0.0))
    targets = group.targets(label_weight=0.5, temperature=1.0)
    assert math.isclose(sum(targets), 1.0)
    assert targets[0] > targets[1] > targets[2]
    assert group.targets(1.0, 1.0) == [1.0, 0.0, 0.0]
    assert standardised([1.0, 1.0]) == [0.0, 0.0]


def test_groups_round_trip_and_batches_follow_the_seed(tmp_path: Path) -> None:
    groups = [DistillGroup(f"q{i}", "category", "c", ("s", "a"), (1.0, 0.5)) for i in range(10)]
    path = tmp_path / "groups.jsonl.gz"
    assert save_groups(groups, path) == 10
    assert load_groups(path) == groups
    first = [[g.query for g in b] for b in batches(groups, 3, seed=1, epochs=2)]
    assert first == [[g.query for g in b] for b in batches(groups, 3, seed=1, epochs=2)]
    assert len(first) == 6  # 3 full batches an epoch, the short one dropped


def test_validation_holds_out_whole_groups_and_ranks_the_source() -> None:
    groups = [DistillGroup(f"q{i}", "category", "c", ("s", "a"), (1.0, 0.5)) for i in range(50)]
    train, held = split_groups(groups, 400, seed=0)
    assert len(held) == 10 and not set(train) & set(held)
    assert reciprocal_rank([0.9, 0.1, 0.2]) == 1.0
    assert reciprocal_rank([0.1, 0.1, 0.2]) == pytest.approx(1 / 3)


def _tiny_groups(count: int) -> tuple[list[DistillGroup], dict[str, str]]:
    texts = {"shoe": "red running shoes | brand: Acme", "mug": "coffee mug | brand: Bolt",
             "lamp": "desk lamp | brand: Lumo", "sock": "wool socks | brand: Acme"}
    queries = ["running shoes", "red shoes", "trail running", "shoes acme"]
    groups = [DistillGroup(queries[i % 4], "title_span", "tiny", ("shoe", "mug", "lamp", "sock"),
                           (1.5, -0.5, -0.5, 0.0)) for i in range(count)]
    return groups, texts


@pytest.mark.slow
def test_training_learns_the_groups_and_a_stopped_run_resumes_to_the_same_model(
    tmp_path: Path,
) -> None:
    """A run stopped after 2 steps and resumed ends where an uninterrupted run of 4 ends."""
    import torch

    from reranker.listwise import ListwiseConfig, group_scores, train_listwise

    groups, texts = _tiny_groups(8)
    config = ListwiseConfig(batch_groups=2, max_length=24, checkpoint_steps=1,
                            learning_rate=2e-3, lora_dropout=0.0)
    whole, result = train_listwise(groups, texts.__getitem__, config, tmp_path / "whole")
    assert result.steps == 4 and result.resumed_from == 0 and result.pairs == 32
    with pytest.raises(Exception, match="other settings"):
        train_listwise(groups, texts.__getitem__, config.model_copy(update={"seed": 1}),
                       tmp_path / "whole")
    _, part = train_listwise(groups, texts.__getitem__, config, tmp_path / "part", stop_after=2)
    assert part.steps == 2
    resumed, again = train_listwise(groups, texts.__getitem__, config, tmp_path / "part")
    assert again.resumed_from == 2 and again.steps == 4
    with torch.inference_mode():
        a = group_scores(whole, groups[:1], texts.__getitem__, 24)[0]
        b = group_scores(resumed, groups[:1], texts.__getitem__, 24)[0]
    assert torch.allclose(a, b, atol=1e-4)
    assert int(torch.argmax(a)) == 0  # the source (and the teacher's favourite) comes first


@pytest.mark.slow
def test_tune_reranker_distill_writes_a_servable_artifact_and_resumes(tmp_path: Path) -> None:
    """The whole command on 80 real products: index, pseudo-queries, teacher, a stopped run
    that the same command finishes, and an artifact the in-process reranker serves."""
    import gzip
    import json

    from typer.testing import CliRunner

    from plugin.cli import app
    from reranker.cross_encoder import InProcessCrossEncoder, read_model_card

    catalog = tmp_path / "products.jsonl.gz"
    with gzip.open(catalog, "wt", encoding="utf-8") as out:
        for row in demo_slice(80):
            out.write(json.dumps(row) + "\n")
    out_dir, work = tmp_path / "ce", tmp_path / "work"
    command = ["tune", "reranker-distill", "--catalog", str(catalog), "--out", str(out_dir),
               "--work", str(work), "--pseudo-queries", "40", "--max-length", "32",
               "--batch-groups", "4", "--max-steps", "3"]
    stopped = CliRunner().invoke(app, [*command, "--stop-after", "1"])
    assert stopped.exit_code == 0, stopped.output
    assert "stopped after step 1" in stopped.output and not out_dir.exists()
    finished = CliRunner().invoke(app, command)
    assert finished.exit_code == 0, finished.output
    card = read_model_card(out_dir)
    assert card is not None and card.mode == "lora" and card.max_length == 32
    assert card.data["resumed_from_step"] == 1 and card.data["steps"] == 3
    assert "pseudo-queries" in card.data["labels"]
    scores = InProcessCrossEncoder(out_dir).score("running shoes", ["a shoe", "a lamp"])
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    refused = CliRunner().invoke(app, command)
    assert refused.exit_code == 2 and "not an empty folder" in refused.output
