"""``shoprank export ...``: hand tuned models to serving (Triton, ONNX Runtime)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from indexer.errors import IndexerError
from plugin.cli.common import fail, out
from plugin.settings import Settings
from reranker.errors import RerankerError
from reranker.onnx_export import export_onnx
from reranker.triton import TritonReranker
from reranker.triton_export import export_reranker

export_app = typer.Typer(no_args_is_help=True, help="Export tuned models for serving.")

#: Where `scripts/triton` serves from unless told otherwise (run from the repository root).
DEFAULT_REPOSITORY = Path(os.environ.get("SHOPRANK_TRITON_REPOSITORY", "triton_models"))


@export_app.command("reranker")
def export_reranker_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="A `tune reranker` output (LoRA or full).")
    ],
    version: Annotated[
        int | None, typer.Option("--version", help="Version number (default: newest + 1).")
    ] = None,
    repository: Annotated[
        Path, typer.Option("--repository", help="The Triton model repository.")
    ] = DEFAULT_REPOSITORY,
    triton_url: Annotated[
        str | None, typer.Option("--triton-url", help="Load the new version on this server.")
    ] = None,
    load: Annotated[
        bool, typer.Option("--load/--no-load", help="Ask the running server to load it.")
    ] = True,
) -> None:
    """Write a tuned cross-encoder as a new model version; a running Triton loads it at once."""
    try:
        exported = export_reranker(checkpoint, repository, version=version)
    except RerankerError as e:
        fail(str(e))
    out.print(
        f"exported {checkpoint} ({exported.mode}, {exported.size_bytes / 1e6:.1f} MB) as "
        f"version {exported.version}: {exported.folder}"
    )
    if not load:
        return
    url = triton_url or Settings().triton_url
    client = TritonReranker(url, timeout_seconds=5)
    try:
        if not client.live():
            fail(f"no Triton answers at {url}: version {exported.version} was written to "
                 f"{exported.folder}, and a server started on {repository} (scripts/triton "
                 "start) serves it; pass --no-load to only write it", code=1)
        try:
            client.load(exported.version)
        except RerankerError as e:
            # A version the server cannot load must not stay the newest, or the next start
            # fails on it.
            shutil.rmtree(exported.folder, ignore_errors=True)
            fail(f"Triton at {url} could not serve version {exported.version}, so it was "
                  f"removed again: {e}", code=1)
        out.print(f"Triton at {url} now serves version {exported.version}")
    finally:
        client.close()


@export_app.command("onnx")
def export_onnx_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="A `tune reranker` output (LoRA or full).")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="The folder to write.")],
    int8: Annotated[
        bool, typer.Option("--int8/--fp32-only", help="Also write the INT8-quantized graph.")
    ] = True,
) -> None:
    """Write a tuned cross-encoder as ONNX (fp32 and INT8) for `--reranker onnx`."""
    try:
        folder = export_onnx(checkpoint, out_dir, int8=int8)
    except (RerankerError, IndexerError) as e:
        fail(str(e))
    out.print(f"exported {checkpoint} to {folder}; serve it with "
              f"`shoprank serve --reranker onnx --checkpoint {folder}`")
