"""The ``shoprank`` command line, one module per job.

- `plugin.cli.index`: ``reindex``, ``upsert``, ``delete``
- `plugin.cli.search`: ``search``
- `plugin.cli.serve`: ``serve``, ``demo``
- `plugin.cli.eval`: ``eval``
- `plugin.cli.tune`, `tune_ranker`, `tune_distill`: ``tune reranker|encoder|ranker|
  reranker-distill``
- `plugin.cli.export`: ``export reranker|onnx``

`plugin.cli.common` holds what they share (consoles, the one-line failure, settings from
options, typed choices); `plugin.cli.progress` draws indexing phases.
"""

from __future__ import annotations

from typing import Annotated

import typer

from plugin.cli import eval as evaluation
from plugin.cli import export, index, search, serve, tune
from plugin.cli.common import setup_logging

app = typer.Typer(
    name="shoprank",
    help="Product search with hybrid retrieval and semantic reranking.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log debug messages too.")
    ] = False,
) -> None:
    """shoprank: index a catalog, search it, serve it, evaluate it."""
    setup_logging(verbose)


app.command()(index.reindex)
app.command()(index.upsert)
app.command()(index.delete)
app.command()(search.search)
app.command()(serve.serve)
app.command()(serve.demo)
app.command("eval")(evaluation.evaluate)
app.add_typer(tune.tune_app, name="tune")
app.add_typer(export.export_app, name="export")
