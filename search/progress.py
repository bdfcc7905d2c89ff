"""Search progress: trials done, feasible count, Pareto size and hypervolume, as a rich progress bar."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from search.hypervolume import feasible_trials, front_size, normalized_hypervolume
from search.records import is_feasible


REFRESH_S = 1.0  # figures are re-read at most this often: each read scans the study, and free trials take ms


class SearchProgress:
    """A rich progress bar fed by ``update(study)`` (an Optuna callback, or polled by the launcher)."""

    def __init__(self, total: int, *, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.enabled = enabled
        self.progress = Progress(
            TextColumn("search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), disable=not enabled, transient=False,
        )
        self.task = self.progress.add_task("search", total=total, stats="")
        self.refreshed = float("-inf")

    def __enter__(self) -> "SearchProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, study: optuna.Study, _trial=None, *, force: bool = False) -> None:
        """Re-read the study's figures, at most once per ``REFRESH_S`` unless ``force`` (the final figures)."""
        if not self.enabled or (not force and time.monotonic() - self.refreshed < REFRESH_S):
            return
        self.refreshed = time.monotonic()
        s = summary(study)
        self.progress.update(self.task, completed=min(s["complete"], self.progress.tasks[0].total), stats=describe(s))

    __call__ = update  # usable directly as an Optuna callback


def summary(study: optuna.Study) -> dict[str, float | int | None]:
    """From one read of the study's trials (it runs after every trial: each read costs storage round trips)."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {
        "complete": len(complete),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "feasible": sum(is_feasible(t) for t in complete),
        "pareto": front_size(feasible_trials(study, complete), study.directions),
        "hypervolume": normalized_hypervolume(study, complete) if complete else None,
    }


def describe(s: dict[str, float | int | None]) -> str:
    """One line from ``summary``'s figures."""
    hv = "-" if s["hypervolume"] is None else f"{s['hypervolume']:.3f}"
    return f"feasible {s['feasible']}  pareto {s['pareto']}  hv {hv}  failed {s['failed']}"
