"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis).

Every operation the schema lists gets generated requests, valid and invalid, sent through the
app object itself (no network) over 30 real products in the embedded store, with the real
bi-encoder. Whatever is sent, the answer is never a 5xx, its status is one the operation
declares, and its body matches the model declared for that status. Every operation runs as a
shopper (no key: the admin routes answer 401) and the admin routes run again with the right
key. The answers that need a known product or session (which generated ids never hit) are
checked the same way with the catalog's own ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from indexer.encoder import BiEncoder
from indexer.indexing import index_products
from indexer.local_store import LocalStore
from indexer.schema import Product
from plugin.api import create_app
from plugin.pipeline import SearchPipeline
from plugin.search_plan import SearchSettings
from plugin.session_store import InMemorySessionStore
from plugin.settings import Settings
from tests.conftest import demo_slice

KEY = "fuzz-admin-key-4be1"
PRODUCTS = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: Generated requests per operation in the fuzzing phase (schemathesis's coverage phase adds
#: its boundary cases); bounded so that the module runs in about a minute on 2 busy cores.
FUZZ_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
    derandomize=True,
)


def fuzz_settings() -> Settings:
    return Settings(index="fuzz", admin_api_key=KEY)


#: The schema as the app builds it (building an app loads nothing); the requests go to the
#: `fuzzed_app` fixture's app, which has the same routes.
schema = schemathesis.openapi.from_dict(create_app(fuzz_settings()).openapi())


def _needs_the_key(ctx: Any) -> bool:
    return bool(ctx.operation.definition.raw.get("security"))


admin_schema = schema.include(_needs_the_key)


@pytest.fixture(scope="module")
def catalog() -> list[Product]:
    return [Product.model_validate(record) for record in demo_slice(PRODUCTS)]


@pytest.fixture(scope="module")
def fuzzed_app(
    tmp_path_factory: pytest.TempPathFactory, catalog: list[Product]
) -> Iterator[FastAPI]:
    """The app over real demo products, with an admin key and an in-memory session store."""
    encoder = BiEncoder()
    store = LocalStore(tmp_path_factory.mktemp("fuzz") / "index")
    index_products(store, catalog, encoder)
    pipeline = SearchPipeline(store, encoder, sessions=InMemorySessionStore(),
                              settings=SearchSettings(candidates=20))
    yield create_app(fuzz_settings(), pipeline)
    shutdown_lifespans()  # the app's lifespan ends, which closes the pipeline


def _admin_call(case: schemathesis.Case) -> bool:
    """Whether ``case`` calls an admin route with its own method (schemathesis also tries
    methods a path does not take, which answer 405)."""
    return case.method.upper() == case.operation.method.upper() and bool(
        case.operation.definition.raw.get("security")
    )


def _unreadable_body(response: schemathesis.Response) -> bool:
    """A 400/422 for a body that is not JSON at all: FastAPI reads the body before any
    dependency runs, so such a body is refused before the key is looked at."""
    if response.status_code == 400:
        return True
    detail = response.json().get("detail") if response.status_code == 422 else None
    return isinstance(detail, list) and any(p.get("type") == "json_invalid" for p in detail)


@schema.parametrize()
@FUZZ_SETTINGS
def test_every_operation_as_a_shopper(fuzzed_app: FastAPI, case: schemathesis.Case) -> None:
    """No 5xx, only declared statuses and bodies; without the key an admin route does
    nothing and says so (401), unless the body was not even JSON."""
    response = case.call_and_validate(checks=CHECKS, app=fuzzed_app)
    if _admin_call(case):
        assert response.status_code == 401 or _unreadable_body(response), response.text


@admin_schema.parametrize()
@FUZZ_SETTINGS
def test_admin_operations_with_the_key(fuzzed_app: FastAPI, case: schemathesis.Case) -> None:
    response = case.call_and_validate(
        headers={"X-API-Key": KEY}, checks=CHECKS, app=fuzzed_app
    )
    if _admin_call(case) and response.request.headers.get("X-API-Key") == KEY:
        # (Some generated cases leave the header out on purpose: those answer 401.)
        assert response.status_code not in (401, 403), response.text


def _call(fuzzed_app: FastAPI, path: str, method: str, **parts: Any) -> schemathesis.Response:
    case = schema[path][method].Case(**parts)
    response: schemathesis.Response = case.call_and_validate(checks=CHECKS, app=fuzzed_app)
    return response


def test_known_products_and_sessions_answer_as_declared(
    fuzzed_app: FastAPI, catalog: list[Product]
) -> None:
    """The 2xx answers generated ids never reach: a stored product, its neighbours, a
    session's events, recommendations and state, and forgetting it."""
    pid = catalog[0].id
    admin = {"X-API-Key": KEY}
    click = {"type": "click", "session_id": "fuzz-s1", "product_id": pid,
             "timestamp": datetime.now(UTC).isoformat()}
    expected = [
        (("/products/{product_id}", "GET"), {"path_parameters": {"product_id": pid}}, 200),
        (("/similar/{product_id}", "GET"),
         {"path_parameters": {"product_id": pid}, "query": {"k": 3}}, 200),
        (("/events", "POST"), {"body": {"events": [click]}}, 200),
        (("/recommend", "GET"), {"query": {"session_id": "fuzz-s1", "k": 3}}, 200),
        (("/sessions/{session_id}", "GET"),
         {"path_parameters": {"session_id": "fuzz-s1"}, "headers": admin}, 200),
        (("/sessions/{session_id}", "DELETE"),
         {"path_parameters": {"session_id": "fuzz-s1"}, "headers": admin}, 204),
        (("/search", "POST"),
         {"body": {"query": catalog[1].title[:40], "explain": True, "k": 5}}, 200),
    ]
    for (path, method), parts, status in expected:
        response = _call(fuzzed_app, path, method, **parts)
        assert response.status_code == status, (path, method, response.text)


def test_every_reference_in_the_schema_resolves() -> None:
    """A ``$ref`` to a model the schema lacks breaks the docs page and every client
    generator (`POST /events` had two)."""
    raw = schema.raw_schema
    known = {f"#/components/schemas/{name}" for name in raw["components"]["schemas"]}

    def refs(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    assert set(refs(raw)) - known == set()


def test_the_admin_routes_declare_the_key() -> None:
    raw = schema.raw_schema
    assert raw["components"]["securitySchemes"]["AdminKey"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "SHOPRANK_ADMIN_API_KEY; the admin routes need it",
    }
    admin = sorted(
        f"{method.upper()} {path}"
        for path, operations in raw["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    )
    assert admin == ["DELETE /products/{product_id}", "DELETE /sessions/{session_id}",
                     "GET /sessions/{session_id}", "PATCH /products/{product_id}",
                     "PUT /products/{product_id}"]
