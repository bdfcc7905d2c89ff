"""Hypervolume of a study's feasible front: the one implementation the progress bar, the reports and the
benchmarks share (computed by ``moocore``, a maintained C library; never read back from a plot).

Values are turned into minimisation by the study's directions, so a reference point is given in the
objectives' own units and directions (e.g. 10% beyond the worst value of each).
"""

from __future__ import annotations

import math
from typing import Sequence

import moocore
import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

REFERENCE_MARGIN = 0.1


def _signs(directions: Sequence[StudyDirection | str]) -> np.ndarray:
    names = [d.name.lower() if isinstance(d, StudyDirection) else str(d).lower() for d in directions]
    return np.array([1.0 if name == "minimize" else -1.0 for name in names])


def hypervolume(values, directions: Sequence[StudyDirection | str], reference: Sequence[float]) -> float:
    """Volume dominated by ``values`` (rows of objective values) up to ``reference``; points beyond it count 0."""
    signs = _signs(directions)
    points = np.asarray(values, dtype=float).reshape(-1, len(signs)) * signs
    ref = np.asarray(reference, dtype=float) * signs
    points = points[np.all(points < ref, axis=1)]
    return float(moocore.hypervolume(points, ref=ref)) if len(points) else 0.0


def reference_point(values, directions: Sequence[StudyDirection | str], margin: float = REFERENCE_MARGIN) -> list[float]:
    """``margin`` of each objective's range beyond its worst value (a flat objective: beyond by max(|v|, 1))."""
    signs = _signs(directions)
    minimised = np.asarray(values, dtype=float).reshape(-1, len(signs)) * signs
    worst, best = minimised.max(axis=0), minimised.min(axis=0)
    span = np.where(worst > best, worst - best, np.maximum(np.abs(worst), 1.0))
    return list((worst + margin * span) * signs)


def _feasible(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in trial.constraints.values()) and all(math.isfinite(v) for v in trial.values)


def feasible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials within every budget and with finite values, in trial-number order."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _feasible(t)]


def hypervolume_history(study: optuna.Study, reference: Sequence[float]) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the feasible trials up to it) after every COMPLETE trial."""
    history, values, current = [], [], 0.0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if _feasible(trial):
            values.append(trial.values)
            current = hypervolume(values, study.directions, reference)
        history.append((trial.number, current))
    return history


def normalized_hypervolume(study: optuna.Study) -> float | None:
    """Hypervolume of the feasible front in the box from its ideal point to ``reference_point`` (0..1).

    None for single-objective studies or with no feasible trial. Only a progress indicator: the box
    grows with the front, so compare runs with ``hypervolume`` at one fixed reference point.
    """
    if len(study.directions) < 2:
        return None
    trials = feasible_trials(study)
    if not trials:
        return None
    values = np.array([t.values for t in trials])
    reference = np.array(reference_point(values, study.directions))
    signs = _signs(study.directions)
    ideal = (values * signs).min(axis=0)
    box = float(np.prod(reference * signs - ideal))
    return hypervolume(values, study.directions, reference) / box
