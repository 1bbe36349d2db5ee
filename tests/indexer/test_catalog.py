from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from indexer.catalog import load_catalog
from indexer.errors import CatalogError
from indexer.schema import Product, product_to_text

GOOD = {"id": "a1", "title": "Steel water bottle", "brand": "Hydro", "price": 19.5}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def ragged_catalog(tmp_path: Path) -> Path:
    return write_lines(
        tmp_path / "catalog.jsonl",
        [
            json.dumps(GOOD),
            '{"id": "b2", "title": "broken',
            json.dumps({"title": "no id here"}),
            json.dumps({"id": "c3"}),
            json.dumps({"id": "d4", "title": "Cheap", "price": -1}),
            '{"id": "e5", "title": "Not a number", "price": NaN}',
            "",
            json.dumps({**GOOD, "title": "Steel water bottle v2"}),
            json.dumps({"id": "f6", "title": "Ragged", "brand": None, "category": None,
                        "description": None, "bullet_points": None, "attributes": None}),
        ],
    )


def test_bad_lines_are_reported_with_line_number_and_reason(ragged_catalog: Path) -> None:
    load = load_catalog(ragged_catalog)
    reasons = {error.line: error.reason for error in load.errors}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "invalid JSON" in reasons[2]
    assert "'id'" in reasons[3] and "required" in reasons[3].lower()
    assert "'title'" in reasons[4]
    assert "'price'" in reasons[5] and "greater than or equal to 0" in reasons[5]
    assert "'price'" in reasons[6] and "finite" in reasons[6]
    assert str(load.errors[0]).startswith("line 2: ")


def test_default_skips_bad_lines_and_last_duplicate_wins(ragged_catalog: Path) -> None:
    load = load_catalog(ragged_catalog)
    assert [p.id for p in load.products] == ["a1", "f6"]
    assert load.duplicate_ids == ["a1"]
    assert next(p for p in load.products if p.id == "a1").title == "Steel water bottle v2"


def test_ragged_nulls_become_empty_values(ragged_catalog: Path) -> None:
    ragged = next(p for p in load_catalog(ragged_catalog).products if p.id == "f6")
    assert (ragged.brand, ragged.category, ragged.description) == (None, [], "")
    assert (ragged.bullet_points, ragged.attributes) == ([], {})


def test_strict_mode_fails_listing_every_bad_line(ragged_catalog: Path) -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog(ragged_catalog, strict=True)
    message = str(info.value)
    assert "5 invalid line(s)" in message and "nothing was written" in message
    assert "line 2:" in message and "line 6:" in message


def test_gzip_catalog_and_extra_fields_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "catalog.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({**GOOD, "gtin": "0095205603217", "id": 3920564}) + "\n")
    (product,) = load_catalog(path).products
    assert product.id == "3920564"
    assert product.model_dump()["gtin"] == "0095205603217"


def test_missing_catalog_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="catalog not found"):
        load_catalog(tmp_path / "nope.jsonl")


def test_product_to_text_puts_title_first_and_skips_empty_parts() -> None:
    product = Product(
        id="1",
        title="Desk lamp",
        brand="Ikea",
        category=["Home", "Lighting"],
        attributes={"color_name": "White"},
        bullet_points=["LED", "Dimmable"],
    )
    assert product_to_text(product) == (
        "Desk lamp | brand: Ikea | category: Home > Lighting | color name: White | LED Dimmable"
    )
    assert product_to_text(Product(id="2", title="Plain")) == "Plain"


def test_a_stock_quantity_sets_in_stock_and_is_kept(tmp_path: Path) -> None:
    catalog = write_lines(tmp_path / "stock.jsonl", [
        json.dumps({**GOOD, "id": "none-left", "stock": 0}),
        json.dumps({**GOOD, "id": "three-left", "stock": 3}),
        json.dumps({**GOOD, "id": "says-so", "stock": 0, "in_stock": True}),
        json.dumps({**GOOD, "id": "null-flag", "stock": 2, "in_stock": None}),
        json.dumps({**GOOD, "id": "flag-only", "in_stock": False}),
        json.dumps({**GOOD, "id": "unknown"}),
        json.dumps({**GOOD, "id": "not-a-count", "stock": "plenty"}),
        json.dumps({**GOOD, "id": "a-bool", "stock": True}),
    ])
    load = load_catalog(catalog)
    assert load.errors == []
    in_stock = {p.id: p.in_stock for p in load.products}
    assert in_stock == {
        "none-left": False, "three-left": True, "says-so": True, "null-flag": True,
        "flag-only": False, "unknown": None, "not-a-count": None, "a-bool": None,
    }
    none_left = load.products[0]
    assert none_left.model_dump()["stock"] == 0
    # A stored record reads back the same (the rule never overrides a written in_stock).
    assert Product.model_validate_json(none_left.model_dump_json()) == none_left


def test_stock_is_not_model_text() -> None:
    plain = Product(id="1", title="Desk lamp", brand="Ikea")
    stocked = Product.model_validate({"id": "1", "title": "Desk lamp", "brand": "Ikea",
                                      "stock": 0, "in_stock": False})
    assert product_to_text(stocked) == product_to_text(plain) == "Desk lamp | brand: Ikea"
