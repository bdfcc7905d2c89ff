"""One rich progress line with ETA (on stderr) for the profiler's slow phases: timing, predictor builds.

A b1 at 512x512 takes minutes on a CPU; a silent terminal looks hung. The line is transient (it is
replaced by the result) and costs nothing when disabled, which is the default of the Python API.
"""

from __future__ import annotations

from typing import Self


class PhaseProgress:
    """``advance(n)`` steps of ``total``; ``describe(text)`` changes the phase shown; ``total`` may grow."""

    def __init__(self, description: str, total: float | None, *, enabled: bool = False) -> None:
        from rich.console import Console

        console = Console(stderr=True)
        self.enabled = enabled and console.is_terminal  # a log file gets the result, not blank lines
        if not self.enabled:
            return
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
        )
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> Self:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._progress.stop()

    def advance(self, steps: float = 1.0) -> None:
        if self.enabled:
            self._progress.advance(self._task, steps)

    def describe(self, description: str, *, total: float | None = None, completed: float | None = None) -> None:
        if self.enabled:
            self._progress.update(self._task, description=description, total=total, completed=completed)
