"""The local store's version folders: naming, swapping one in, and cleaning up.

A new version is written into ``.building-<version>`` while the serving one goes on serving and
taking live changes. `publish` then, under the writer lock, copies the live changes logged
since the new version was started into its log, renames the folder and moves ``CURRENT`` in
one atomic replace. So a rebuild or a compaction never blocks upserts while it writes, and loses
none written meanwhile.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

from indexer.local_disk import fsync_tree, remove_path
from indexer.local_update_log import UPDATES, drop_torn_tail

logger = logging.getLogger(__name__)

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
BUILDING_PREFIX = ".building-"


def new_version_name() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")  # sorts by age
    return f"v{stamp}-{secrets.token_hex(3)}"


def current_version(root: Path) -> str | None:
    try:
        return (root / CURRENT).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def log_end(root: Path, version: str | None) -> int:
    """Where the version's log ends now (the caller holds the writer lock)."""
    if version is None:
        return 0
    log = root / version / UPDATES
    drop_torn_tail(log)  # the caller holds the writer lock: a tail now is a killed writer's
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def publish(root: Path, staging: Path, version: str, carry_from: tuple[str | None, int]) -> None:
    """Serve the complete version in ``staging``, with the live changes logged in version
    ``carry_from[0]`` after byte ``carry_from[1]`` (the caller holds the writer lock)."""
    pointer = root / f"{CURRENT}.{version}.tmp"
    try:
        old, offset = carry_from
        if old is not None:
            _carry_log(root / old / UPDATES, offset, staging / UPDATES)
        staging.rename(root / version)
        pointer.write_text(version + "\n", encoding="utf-8")
        fsync_tree(pointer)
    except BaseException:
        remove_path(root / version)
        remove_path(pointer)
        raise
    os.replace(pointer, root / CURRENT)
    fsync_tree(root, recursive=False)
    logger.info("index %s now serves version %s", root, version)


def _carry_log(log: Path, offset: int, into: Path) -> None:
    """Copy the complete batches after byte ``offset`` of ``log`` into a new log."""
    if not log.exists():
        return
    drop_torn_tail(log)
    with log.open("rb") as handle:
        handle.seek(offset)
        tail = handle.read()
    if tail:
        into.write_bytes(tail)
        fsync_tree(into)
        logger.info("carried %d bytes of live changes from %s into the new version",
                    len(tail), log)


def remove_leftovers(root: Path) -> None:
    """Remove what interrupted rebuilds left (the caller holds the rebuild lock)."""
    current = current_version(root)
    for path in root.iterdir():
        incomplete = path.name.startswith(BUILDING_PREFIX) or (
            path.is_dir() and path.name != current and not (path / MANIFEST).is_file()
        )
        if incomplete or path.name.endswith(".tmp"):
            logger.warning("removing leftover of an interrupted rebuild: %s", path)
            remove_path(path)


def prune(root: Path, keep_versions: int) -> None:
    """Keep the serving version and the ``keep_versions - 1`` that served before it."""
    current = current_version(root)
    if current is None:
        return
    versions = sorted(p.name for p in root.iterdir() if p.name.startswith("v"))
    # Anything newer than the current one never served (a rebuild killed before its swap).
    older = [name for name in versions if name < current]
    keep = set(older[-(keep_versions - 1) :]) if keep_versions > 1 else set()
    for name in versions:
        if name != current and name not in keep:
            shutil.rmtree(root / name, ignore_errors=True)
