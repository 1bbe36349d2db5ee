"""The catalog routes: read one product; add, replace, change or delete one (admin only).

Each write is searchable when its response arrives. A missing product is `UnknownProductError`
and a store that cannot serve is `IndexerError`; the app's error handlers answer both.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Response
from pydantic import ValidationError

from indexer.indexing import upsert_products
from indexer.schema import Product
from indexer.updates import update_product
from plugin.api.dependencies import ADMIN, PipelineDep
from plugin.api.error_handlers import request_validation_error
from plugin.api.responses import ADMIN_ERRORS, error_responses
from plugin.errors import UnknownProductError
from plugin.pipeline import SearchPipeline

router = APIRouter()


def _stored(pipeline: SearchPipeline, product_id: str) -> Product:
    product = pipeline.store.get(product_id)
    if product is None:
        raise UnknownProductError(f"no product with id {product_id!r}")
    return product


@router.get("/products/{product_id}", response_model=Product,
            responses=error_responses(404, 422, 503))
def get_product(product_id: str, pipeline: PipelineDep) -> Product:
    return _stored(pipeline, product_id)


@router.put("/products/{product_id}", response_model=Product, dependencies=ADMIN,
            responses=error_responses(*ADMIN_ERRORS, 400, 413, 422, 503))
def put_product(product_id: str, body: Product, pipeline: PipelineDep) -> Product:
    """Add or replace one product; it is searchable when the response arrives."""
    if body.id != product_id:
        raise HTTPException(
            status_code=422,
            detail=f"body id {body.id!r} does not match the path id {product_id!r}",
        )
    upsert_products(pipeline.store, [body], pipeline.encoder)
    return body


@router.patch("/products/{product_id}", response_model=Product, dependencies=ADMIN,
              responses=error_responses(*ADMIN_ERRORS, 400, 404, 413, 422, 503))
def patch_product(
    product_id: str,
    changes: Annotated[dict[str, Any], Body(examples=[{"price": 19.99, "in_stock": False}])],
    pipeline: PipelineDep,
) -> Product:
    """Change some fields of one product (price, stock, ...); searchable on return."""
    product = _stored(pipeline, product_id)
    if changes.get("id", product_id) != product_id:
        raise HTTPException(status_code=422, detail="the id of a product cannot change")
    try:
        updated = Product.model_validate({**product.model_dump(), **changes})
    except ValidationError as e:
        raise request_validation_error(e, "body") from e
    update_product(pipeline.store, product, updated, pipeline.encoder)
    return updated


@router.delete("/products/{product_id}", status_code=204, dependencies=ADMIN,
               responses=error_responses(*ADMIN_ERRORS, 404, 422, 503))
def delete_product(product_id: str, pipeline: PipelineDep) -> Response:
    if pipeline.store.delete([product_id]) == 0:
        raise UnknownProductError(f"no product with id {product_id!r}")
    return Response(status_code=204)
