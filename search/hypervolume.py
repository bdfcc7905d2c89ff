"""Hypervolume of a study's feasible front: the one implementation the progress bar, the reports and the
benchmarks share (computed by ``moocore``, a maintained C library; never read back from a plot), and
the expected improvement of it that the cheap-first sampler ranks candidates by.

Values are turned into minimisation by the study's directions, so a reference point is given in the
objectives' own units and directions (e.g. 10% beyond the worst value of each).
"""

from __future__ import annotations

import math
from typing import Sequence

import moocore
import numpy as np
import optuna
from scipy.special import ndtr
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


def feasible_trials(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """COMPLETE trials within every budget and with finite values, in trial-number order. ``trials``: the
    study's trials when the caller has read them already (the progress bar reads once per trial)."""
    if trials is None:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in trials if t.state == TrialState.COMPLETE and _feasible(t)]


def front_size(trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection | str]) -> int:
    """How many of the feasible ``trials`` no other dominates (ties all count, as in ``study.best_trials``)."""
    if not trials:
        return 0
    points = np.array([t.values for t in trials], dtype=float) * _signs(directions)
    return int(moocore.is_nondominated(points, keep_weakly=True).sum())


def hypervolume_history(study: optuna.Study, reference: Sequence[float]) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the feasible trials up to it) after every COMPLETE trial."""
    history, values, current = [], [], 0.0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if _feasible(trial):
            values.append(trial.values)
            current = hypervolume(values, study.directions, reference)
        history.append((trial.number, current))
    return history


def normalized_hypervolume(study: optuna.Study, trials: Sequence[FrozenTrial] | None = None) -> float | None:
    """Hypervolume of the feasible front in the box from its ideal point to ``reference_point`` (0..1).

    None for single-objective studies or with no feasible trial. Only a progress indicator: the box
    grows with the front, so compare runs with ``hypervolume`` at one fixed reference point. ``trials``:
    as for ``feasible_trials``.
    """
    if len(study.directions) < 2:
        return None
    trials = feasible_trials(study, trials)
    if not trials:
        return None
    values = np.array([t.values for t in trials])
    reference = np.array(reference_point(values, study.directions))
    signs = _signs(study.directions)
    ideal = (values * signs).min(axis=0)
    box = float(np.prod(reference * signs - ideal))
    return hypervolume(values, study.directions, reference) / box


def nondominated_boxes(front: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint boxes (lower, upper corners) covering what ``front`` (minimised) does not dominate below
    ``reference``, sliced along the last objective (lower corners may be -inf)."""
    if front.shape[1] == 1:
        top = min(front[:, 0].min(), reference[0]) if len(front) else reference[0]
        return np.array([[-np.inf]]), np.array([[top]])
    order = np.argsort(front[:, -1], kind="stable")
    levels = np.concatenate([[-np.inf], np.minimum(front[order, -1], reference[-1]), [reference[-1]]])
    lows, highs = [], []
    for k in range(len(order) + 1):
        if levels[k + 1] <= levels[k]:
            continue
        lo, hi = nondominated_boxes(front[order[:k], :-1], reference[:-1])
        lows.append(np.hstack([lo, np.full((len(lo), 1), levels[k])]))
        highs.append(np.hstack([hi, np.full((len(hi), 1), levels[k + 1])]))
    return np.vstack(lows), np.vstack(highs)


def expected_improvement(mean, std, front, reference, chunk: int = 256) -> np.ndarray:
    """Expected hypervolume improvement over ``front`` (rows, minimised) up to ``reference`` of candidates
    whose objectives are independent Gaussians (rows of ``mean`` and ``std``, minimised; ``std`` 0: an
    exact value, whose improvement is then the plain hypervolume gain). Exact, not sampled: the region the
    front does not dominate is cut into boxes, and per objective the expected overlap of [value, inf) with
    a box side [lo, hi] is psi(hi) - psi(lo), psi(t) = E[max(0, t - value)]."""
    mean, std = np.atleast_2d(np.asarray(mean, dtype=float)), np.atleast_2d(np.asarray(std, dtype=float))
    lo, hi = nondominated_boxes(np.asarray(front, dtype=float).reshape(-1, mean.shape[1]), np.asarray(reference, dtype=float))
    gains = []
    for start in range(0, len(mean), chunk):
        m, s = mean[start:start + chunk], std[start:start + chunk]
        volume = np.ones((len(m), len(lo)))
        for j in range(mean.shape[1]):
            volume *= _psi(hi[None, :, j], m[:, j, None], s[:, j, None]) - _psi(lo[None, :, j], m[:, j, None], s[:, j, None])
        gains.append(volume.sum(axis=1))
    return np.concatenate(gains) if gains else np.zeros(0)


def _psi(t: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """E[max(0, t - X)] for X ~ N(mean, std) (std 0: max(0, t - mean)); 0 at t = -inf."""
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = t - mean
        safe = np.where(std > 0, std, 1.0)
        z = gap / safe
        smooth = gap * ndtr(z) + safe * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        value = np.where(std > 0, smooth, np.maximum(gap, 0.0))
    return np.where(np.isneginf(t), 0.0, value)
