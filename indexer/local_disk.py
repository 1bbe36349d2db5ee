"""The local store's contact with the disk: flushing files to it and naming why a write failed."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from indexer.errors import StoreError

#: errnos that mean "no room left", whatever the filesystem calls it.
_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
#: Less room than this left on a filesystem counts as full.
_NEARLY_FULL_BYTES = 1 << 16


def fsync_tree(path: Path, *, recursive: bool = True) -> None:
    """Flush a file, or a folder and (recursively) everything in it, to disk."""
    paths = [path]
    if path.is_dir() and recursive:
        paths = [*sorted(path.rglob("*"), reverse=True), path]
    for item in paths:
        descriptor = os.open(item, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def disk_error(action: str, path: Path, error: OSError) -> StoreError:
    """A `StoreError` that says what could not be written where, and why in plain words.

    >>> disk_error("write a new version of index", Path("/srv/idx"), OSError(28, "x")).args[0]
    'cannot write a new version of index /srv/idx: the disk is full (no space left on device)'
    """
    full = _FULL.get(error.errno or 0)
    if full is None and error.errno is None and _nearly_full(path):
        full = _FULL[errno.ENOSPC]  # a short write (numpy's) carries no errno
    reason = f"the disk is full ({full})" if full else (error.strerror or str(error))
    return StoreError(f"cannot {action} {path}: {reason}")


def _nearly_full(path: Path) -> bool:
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
