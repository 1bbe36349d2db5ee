"""Fairness of exposure for brands and sellers: every piece of it, in one room.

Why here, in `plugin`: fairness is a post-processing step of the query path (after the
reranker and the final stage) and of ``shoprank eval``, both of which the plugin composes.
Nothing in `indexer` or `reranker` needs it, and the serving stage reads the request's
`plugin.models.FairnessPolicy`, so the composition root is the lowest layer that holds it all.

- `items`: what the policies see (`FairnessItem`), what they return (`FairnessResult`,
  `Move`) and how items are built from products and groups;
- `policies`: the per-query post-processors `FairTopK`, `ExposureParity` and `GroupCap`;
- `amortized`: `AmortizedExposure`, equity of attention across queries;
- `exposure_store`: the `ExposureStore` protocol it keeps its window in, and the in-process
  `InMemoryExposureStore`;
- `metrics`: the measures (FA*IR tables, exposure, AWRF, nDCG cost) on plain sequences;
- `stage`: the serving step, a request's policy applied to the ranked products;
- `evaluation`: the offline report of ``shoprank eval --fairness``.
"""
