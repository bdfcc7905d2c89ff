"""Interference detection for CPU timing: is another process stealing the cores we are timing on?

A fixed reference kernel (a small fp32 matmul at the measurement's thread count) is timed interleaved
with the measured model, round by round, so it sees the same contention over the same seconds. Its
median is compared with the quiet baseline of this machine (the fastest reference median ever seen
here at that thread count, kept in a small JSON file next to the profile cache). Time-slicing by other
processes slows both alike (on a 2-core host 4 busy-loop processes made b1 14.6x slower), so a reference
more than ``CONTENDED_RATIO`` above its baseline (20% trimmed mean over its trials: contention in a
fifth of the trials shows before it moves a median, one stray hiccup does not) flags the measurement.

Contention is bursty, so a reference can slip between another process's time slices; the kernel's own
account is exact: ``/proc/self/task/*/schedstat`` holds the time each of our threads spent runnable
but waiting for a core. More than ``CONTENDED_WAIT`` of the timed thread-seconds spent waiting also
flags the measurement ``contended``. Load average and CPU steal are recorded beside both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hrvit_nas import atomic_write_text

# Measured on the idle 2-core host (benchmarks/RESULTS.md): quiet references read 1.03-1.09x their
# fastest-ever baseline, 4 hogs 2.7-3.0x with 60% run-queue wait; 1.10 flagged quiet predictor builds.
CONTENDED_RATIO = 1.25
CONTENDED_WAIT = 0.05
_TASKS = Path("/proc/self/task")
_REFERENCE_SIDE = 256
_PROC_STAT = Path("/proc/stat")


def reference_kernel() -> Any:
    """A no-argument call of fixed, compute-bound work (about 1-3 ms on one core)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(_REFERENCE_SIDE, _REFERENCE_SIDE, generator=generator)
    b = torch.randn(_REFERENCE_SIDE, _REFERENCE_SIDE, generator=generator)
    return lambda: torch.mm(a, b)


def baseline_path() -> Path:
    from profiling.cache import default_cache_path

    return default_cache_path().parent / "reference-baseline.json"


class ReferenceBaseline:
    """Quiet reference medians (ms) of this machine, keyed by CPU fingerprint and thread count."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else baseline_path()

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # missing or damaged: re-learned from the next measurement, nothing else depends on it
        return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and v > 0} if isinstance(data, dict) else {}

    def observe(self, key: str, median_ms: float) -> float:
        """Record a reference median and return the baseline (the fastest median seen, this one included)."""
        known = self._read()
        baseline = min(known.get(key, median_ms), median_ms)
        if known.get(key) != baseline:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.path, json.dumps({**known, key: baseline}, indent=1, sort_keys=True))
            except OSError:
                pass  # a read-only home must not stop a measurement; the baseline is then this run's own
        return baseline


def run_queue_wait_s() -> float | None:
    """Seconds all threads of this process have spent runnable but not running (None without schedstat)."""
    total, seen = 0, False
    try:
        tasks = list(_TASKS.iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
            seen = True
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total / 1e9 if seen else None


@dataclass(frozen=True)
class SystemLoad:
    """Load average over 1 minute and the share of CPU time stolen by a hypervisor during a window."""

    load_avg_1m: float | None
    cpu_steal_pct: float | None


def _cpu_times() -> list[int] | None:
    try:
        fields = _PROC_STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    return [int(value) for value in fields[1:]] if fields and fields[0] == "cpu" else None


class LoadWindow:
    """Reads /proc/stat at the start and at ``close`` to report the steal share in between."""

    def __init__(self) -> None:
        self._start = _cpu_times()

    def close(self) -> SystemLoad:
        end = _cpu_times()
        steal = None
        if self._start is not None and end is not None and len(end) > 7:
            deltas = [e - s for e, s in zip(end, self._start)]
            total = sum(deltas[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
            steal = 100.0 * deltas[7] / total if total > 0 else 0.0
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = None
        return SystemLoad(load_avg_1m=load, cpu_steal_pct=steal)
