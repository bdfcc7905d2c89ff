"""Peak memory of one inference call: CUDA max allocated (weights included), CPU resident-set growth."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from profiling.device import synchronize

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory_bytes(run: Callable[[], object], device: torch.device) -> int | None:
    """CUDA: ``max_memory_allocated`` during ``run``. CPU: peak RSS above the RSS before it.

    The CPU figure needs Linux (``/proc/self/clear_refs`` resets the peak); elsewhere it is None. It is a
    lower bound in a long-lived process, where freed pages still resident can serve the call without
    growing RSS; ``profile(isolate=True)`` measures in a fresh process.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    try:
        _CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kib("VmRSS")
    run()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024
