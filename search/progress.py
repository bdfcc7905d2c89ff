"""Search progress: trials done, feasible count, Pareto size and hypervolume, as a rich progress bar.

Hypervolume comes from Optuna's public (experimental) ``plot_hypervolume_history``: Optuna 5 exposes
no other public hypervolume function (``optuna._hypervolume`` is private). We read the history off the
returned line and close the figure; the plot's global style change is confined to a style context.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from search.records import is_feasible


def hypervolume_history(study: optuna.Study, reference_point: Sequence[float]) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the feasible front so far) for every COMPLETE trial, in order."""
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_hypervolume_history

    with warnings.catch_warnings(), plt.style.context("default"):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot_hypervolume_history(study, reference_point)
    try:
        line = axes.lines[0]
        return [(int(n), float(v)) for n, v in zip(line.get_xdata(), line.get_ydata())]
    finally:
        plt.close(axes.figure)


def normalized_hypervolume(study: optuna.Study) -> float | None:
    """Hypervolume of the feasible front in the box from its ideal to 10% beyond its nadir (0..1).

    None for single-objective studies or with no feasible trial. Only a progress indicator: the box
    grows with the front, so compare runs with ``hypervolume_history`` at one fixed reference point.
    """
    if len(study.directions) < 2:
        return None
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if is_feasible(t) and all(math.isfinite(v) for v in t.values)
    ]
    if not trials:
        return None
    signs = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in study.directions])
    values = np.array([t.values for t in trials]) * signs
    ideal, nadir = values.min(axis=0), values.max(axis=0)
    span = np.where(nadir > ideal, nadir - ideal, np.maximum(np.abs(nadir), 1.0))
    reference = nadir + 0.1 * span
    history = hypervolume_history(study, reference * signs)
    return history[-1][1] / float(np.prod(reference - ideal)) if history else None


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

    def __enter__(self) -> "SearchProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def update(self, study: optuna.Study, _trial=None) -> None:
        if not self.enabled:
            return
        self.progress.update(self.task, completed=min(summary(study)["complete"], self.progress.tasks[0].total), stats=describe(study))

    __call__ = update  # usable directly as an Optuna callback


def summary(study: optuna.Study) -> dict[str, float | int | None]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {
        "complete": len(complete),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "feasible": sum(is_feasible(t) for t in complete),
        "pareto": len([t for t in study.best_trials if is_feasible(t)]) if complete else 0,
        "hypervolume": normalized_hypervolume(study) if complete else None,
    }


def describe(study: optuna.Study) -> str:
    s = summary(study)
    hv = "-" if s["hypervolume"] is None else f"{s['hypervolume']:.3f}"
    return f"feasible {s['feasible']}  pareto {s['pareto']}  hv {hv}  failed {s['failed']}"
