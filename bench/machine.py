"""What every benchmark shares and that imports nothing heavy: the processor's name and the
percentile rule."""

from __future__ import annotations

import platform
from pathlib import Path


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` 0-100) of ``values``."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
