"""The default sampler: cheap-first, surrogate-assisted (the OFA/HAT recipe on Optuna's sampler interface).

Params and FLOPs of any member are exact and cost microseconds (``profiling.analytic``); accuracy,
latency and energy are not. So for every proposal the sampler screens thousands of candidates in
memory (the whole space when it has at most ``ENUMERATE_LIMIT`` members, else a seeded random pool
grown around the measured front): candidates that break a params/FLOPs budget or that the study has
already seen are dropped, each expensive objective is predicted by a Bayesian linear model fitted on
the measured trials (features: the knobs one-hot and as numbers, log params and log FLOPs), and the
candidate with the largest optimistic hypervolume improvement over the measured front (prediction
plus ``BETA`` standard deviations) is the one measured. The first ``STARTUP`` proposals spread over
compute instead. Only measured trials reach the study; the screening statistics of a proposal are
kept on the sampler (``screening[trial number]``) and stored by the evaluator as the trial's
``screening`` attribute. All state is re-derived from the stored trials, so a resumed study, or a
second worker, continues where the study is.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any, Callable, Mapping, Sequence

import moocore
import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from hrvit_space import ArchConfig, SearchSpace
from search.objectives import BUDGETS
from search.samplers import is_fixed, params_key, seen_keys, space_distributions

ENUMERATE_LIMIT = 20_000  # spaces up to this size are screened whole
POOL_SIZE = 4096  # random members screened in larger spaces
NEIGHBOURS_PER_PROPOSAL = 64  # one-knob mutations of front members added to the pool per proposal
STARTUP = 8  # proposals spread over compute before the predictors are trusted
BETA = 1.5  # optimism of the acquisition, in predictive standard deviations
RIDGE = 1.0  # prior precision of the Bayesian linear predictors (standardised features and targets)
EXACT_HVI = 128  # candidates whose improvement is computed exactly (the rest ranked by a cheap bound)
MARGIN = 0.1


class CheapFirstSampler(optuna.samplers.BaseSampler):
    """See the module docstring. ``objectives``: ``search.objectives.Objective`` in the study's order;
    ``budgets``: budget name -> limit; ``cheap(config) -> {measurement key: exact value}``."""

    def __init__(
        self, space: SearchSpace, objectives: Sequence, budgets: Mapping[str, float],
        cheap: Callable[[ArchConfig], dict[str, float]], seed: int | None = None,
    ) -> None:
        self.space = space
        self.objectives = list(objectives)
        self.budgets = {BUDGETS[name].key: limit for name, limit in budgets.items()}
        self.cheap = cheap
        self.rng = random.Random(seed)
        self.knobs = space.knobs()
        self.distributions = space_distributions(space)
        self.screening: dict[int, dict[str, Any]] = {}
        self._pool: dict[str, tuple[dict[str, Any], np.ndarray, dict[str, float]]] = {}
        if space.size() <= ENUMERATE_LIMIT:
            for values in itertools.product(*(k.choices for k in self.knobs)):
                self._add(dict(zip((k.name for k in self.knobs), values)))
        else:
            while len(self._pool) < POOL_SIZE:
                self._add(self._random_params())

    # ------------------------------------------------------------------------------- the pool
    def _random_params(self) -> dict[str, Any]:
        return {k.name: self.rng.choice(k.choices) for k in self.knobs}

    def _add(self, params: dict[str, Any]) -> None:
        key = params_key(params)
        if key not in self._pool:
            config = self.space.decode(params)
            cheap = self.cheap(config)
            self._pool[key] = (params, self._features(params, config, cheap), cheap)

    def _features(self, params: dict[str, Any], config: ArchConfig, cheap: dict[str, float]) -> np.ndarray:
        """Knobs one-hot and scaled, blocks per branch (all modules), log params and log FLOPs (and squares)."""
        row = [float(sum(module[b] for module in config.depths if b < len(module))) for b in range(config.num_branches)]
        for knob in self.knobs:
            value = params[knob.name]
            row += [float(value == c) for c in knob.choices]
            if all(isinstance(c, (int, float)) for c in knob.choices) and len(knob.choices) > 1:
                low, high = min(knob.choices), max(knob.choices)
                row.append((value - low) / (high - low))
        capacity = [math.log(max(cheap["params_m"], 1e-9)), math.log(max(cheap["gflops"], 1e-9))]
        return np.array(row + capacity + [c * c for c in capacity])

    def _grow_around(self, front_params: list[dict[str, Any]]) -> None:
        """Large spaces: add one-knob neighbours of front members, where improvements are likeliest."""
        if self.space.size() <= ENUMERATE_LIMIT or not front_params:
            return
        for _ in range(NEIGHBOURS_PER_PROPOSAL):
            params = dict(self.rng.choice(front_params))
            knob = self.rng.choice(self.knobs)
            params[knob.name] = self.rng.choice(knob.choices)
            self._add(params)

    # ------------------------------------------------------------------------ Optuna interface
    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self.distributions)

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise RuntimeError(f"{param_name!r} is outside the search space the cheap-first sampler was built for")

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        if is_fixed(trial):
            return {}
        trials = study.get_trials(deepcopy=False)
        measured = [t for t in trials if t.state == TrialState.COMPLETE and t.number != trial.number]
        self._grow_around([t.params for t in measured])
        seen = seen_keys(study, trial)
        keys = [k for k, (_, _, cheap) in self._pool.items() if k not in seen and self._within_budget(cheap)]
        if not keys:  # every member was proposed (or breaks a budget): the search's trial cap stops before this
            keys = [k for k in self._pool if k not in seen] or list(self._pool)
        stats: dict[str, Any] = {"candidates": len(keys)}
        usable = [t for t in measured if self._targets(t) is not None]
        if len(usable) < STARTUP:
            choice = self._spread(keys, [t.params for t in trials if t.number != trial.number])
            stats["phase"] = "startup"
        else:
            choice, predicted, gain = self._acquire(keys, usable)
            stats.update(phase="screened", predicted=predicted, improvement=gain)
        self.screening[trial.number] = stats
        return dict(self._pool[choice][0])

    # ---------------------------------------------------------------------------- proposals
    def _within_budget(self, cheap: dict[str, float]) -> bool:
        return all(cheap[key] <= limit for key, limit in self.budgets.items() if key in cheap)

    def _spread(self, keys: list[str], others: list[dict[str, Any]]) -> str:
        """The candidate farthest in log FLOPs from every other trial (ties at random): covers compute."""
        flops = np.log(np.array([self._pool[k][2]["gflops"] for k in keys]))
        taken = [math.log(self.cheap(self.space.decode(p))["gflops"]) for p in others if len(p) == len(self.knobs)]
        if not taken:
            return self.rng.choice(keys)
        distance = np.min(np.abs(flops[:, None] - np.array(taken)[None, :]), axis=1)
        best = np.flatnonzero(distance >= distance.max() - 1e-12)
        return keys[int(self.rng.choice(list(best)))]

    def _targets(self, trial) -> list[float] | None:
        """Measured values of the expensive objectives (None when one is missing or not finite)."""
        measurements = trial.user_attrs.get("measurements", {})
        values = []
        for index, objective in enumerate(self.objectives):
            value = measurements.get(objective.key, trial.values[index] if trial.values else None)
            if objective.key not in next(iter(self._pool.values()))[2]:
                if value is None or not math.isfinite(value):
                    return None
                values.append(float(value))
        return values

    def _acquire(self, keys: list[str], usable) -> tuple[str, dict[str, float], float]:
        cheap_keys = next(iter(self._pool.values()))[2]
        candidates = np.array([self._pool[k][1] for k in keys])
        train = np.array([self._pool[params_key(t.params)][1] if params_key(t.params) in self._pool
                          else self._trial_features(t.params) for t in usable])
        targets = np.array([self._targets(t) for t in usable])
        signs = np.array([1.0 if o.direction == "minimize" else -1.0 for o in self.objectives])
        optimistic = np.zeros((len(keys), len(self.objectives)))
        front = np.zeros((len(usable), len(self.objectives)))
        predicted: dict[str, float] = {}
        expensive = 0
        for index, objective in enumerate(self.objectives):
            if objective.key in cheap_keys:
                optimistic[:, index] = [self._pool[k][2][objective.key] for k in keys]
                front[:, index] = [self._cheap_of(t)[objective.key] for t in usable]
                continue
            mean, std = _bayesian_linear(train, targets[:, expensive], candidates)
            optimistic[:, index] = mean - signs[index] * BETA * std
            front[:, index] = targets[:, expensive]
            predicted[objective.name] = mean
            expensive += 1
        feasible = np.array([self._within_budget(self._cheap_of(t)) and _feasible(t) for t in usable])
        front = front[feasible] * signs
        optimistic = optimistic * signs
        choice, gain = _best_improvement(optimistic, front, self.rng)
        return keys[choice], {name: float(values[choice]) for name, values in predicted.items()}, gain

    def _trial_features(self, params: dict[str, Any]) -> np.ndarray:
        config = self.space.decode(params)
        return self._features(params, config, self.cheap(config))

    def _cheap_of(self, trial) -> dict[str, float]:
        key = params_key(trial.params)
        return self._pool[key][2] if key in self._pool else self.cheap(self.space.decode(trial.params))


def _feasible(trial) -> bool:
    return all(c <= 0 for c in trial.constraints.values())


def _bayesian_linear(x: np.ndarray, y: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior predictive mean and standard deviation of a ridge-prior linear model at ``query``; the
    deviation includes the residual noise, since an architecture's own deviation from the trend is what
    puts it on the front."""
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0
    xs, qs = (x - mu) / sd, (query - mu) / sd
    y_mu, y_sd = y.mean(), y.std() or 1.0
    ys = (y - y_mu) / y_sd
    xs, qs = np.hstack([xs, np.ones((len(xs), 1))]), np.hstack([qs, np.ones((len(qs), 1))])
    precision = xs.T @ xs + RIDGE * np.eye(xs.shape[1])
    chol = np.linalg.cholesky(precision)
    weights = np.linalg.solve(chol.T, np.linalg.solve(chol, xs.T @ ys))
    residual = ys - xs @ weights
    noise = max(float(residual @ residual) / max(len(ys) - 1, 1), 1e-6)
    spread = np.linalg.solve(chol, qs.T)
    std = np.sqrt(noise * (1.0 + (spread * spread).sum(axis=0)))
    return (qs @ weights) * y_sd + y_mu, std * y_sd


def _best_improvement(candidates: np.ndarray, front: np.ndarray, rng: random.Random) -> tuple[int, float]:
    """Index of the candidate (rows, minimised) adding most hypervolume to ``front`` (minimised), and that gain.

    Objectives are scaled to the candidates' and front's joint range; candidates are first ranked by how
    far they reach beyond the front (an additive-epsilon bound), and the top ``EXACT_HVI`` get the exact
    improvement from ``moocore``. No candidate beyond the front: the one closest to it.
    """
    points = np.vstack([candidates, front]) if len(front) else candidates
    low, high = points.min(axis=0), points.max(axis=0)
    scale = np.where(high > low, high - low, 1.0)
    cand, base = (candidates - low) / scale, (front - low) / scale
    reference = np.full(cand.shape[1], 1.0 + MARGIN)
    if not len(base):
        return rng.randrange(len(cand)), 0.0
    reach = -np.max(np.min(cand[:, None, :] - base[None, :, :], axis=2), axis=1)  # > 0: beyond the front
    order = np.argsort(-reach, kind="stable")
    if reach[order[0]] <= 0:
        return int(order[0]), 0.0
    top = [i for i in order[:EXACT_HVI] if reach[i] > 0]
    before = float(moocore.hypervolume(base, ref=reference))
    gains = [float(moocore.hypervolume(np.vstack([base, cand[i]]), ref=reference)) - before for i in top]
    best = max(gains)
    ties = [i for i, g in zip(top, gains) if g >= best - 1e-12]
    return int(rng.choice(ties)), best
