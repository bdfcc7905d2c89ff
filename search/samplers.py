"""Samplers of ``hrvit-nas search``: the cheap-first default and the plain Optuna samplers, all of which
propose only architectures the study has not seen, so a duplicate is never stored.

Seeds: a worker's sampler seed is derived from ``(--seed, trials already in the study, worker index)``,
so a resumed or added worker continues the search instead of replaying its first proposals.
"""

from __future__ import annotations

import functools
import random
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution

from hrvit_nas import UserError
from hrvit_space import ArchConfig, SearchSpace
from search.parameters import SharedRead, is_fixed, params_key, space_distributions
from search.screening import CheapFirstSampler

DEFAULT_SAMPLER = "cheap-first"
SAMPLERS = ("cheap-first", "tpe", "nsga2", "gp", "random")
NSGA2_POPULATION = 20  # small generations: 100 trials see five (benchmarks/search_quality.py)
PROPOSAL_ATTEMPTS = 20  # proposals of a plain sampler before a random unseen member is taken instead


def derive_seed(seed: int | None, trials_in_study: int, worker: int = 0) -> int | None:
    """A worker's sampler seed: new for every (seed, study progress, worker), reproducible from them."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, trials_in_study, worker]).generate_state(1)[0])


@functools.lru_cache(maxsize=1 << 16)
def cheap_measurements(config: ArchConfig, batch: int = 1) -> dict[str, float]:
    """Exact params/MACs/FLOPs of ``config`` at its input size (with the breakdowns the reports plot), counted
    from the fields in microseconds. Cached: treat the returned dict as read-only."""
    from profiling import analytic_counts

    counts = analytic_counts(config, batch=batch)
    return {
        "params_m": counts.params / 1e6, "gmacs": counts.macs / 1e9, "gflops": counts.flops / 1e9,
        "params_m_by_branch": {k: v / 1e6 for k, v in counts.params_by_branch.items()},
        "gmacs_by_branch": {k: v / 1e9 for k, v in counts.macs_by_branch.items()},
        "gmacs_by_component": {k: v / 1e9 for k, v in counts.macs_by_component.items()},
    }


def cheap_function(batch: int = 1, latency_predictor=None) -> Callable[[ArchConfig], dict[str, float]]:
    """What the screening sampler knows without measuring: the counts, plus the latency predictor's answer
    (table lookups, no timing) when the search has one, so a latency budget is screened exactly too."""
    if latency_predictor is None:
        return functools.partial(cheap_measurements, batch=batch)

    def counts_and_predicted_latency(config: ArchConfig) -> dict[str, float]:
        return {**cheap_measurements(config, batch), "latency_ms": float(latency_predictor.predict(config))}

    return counts_and_predicted_latency


class DistinctSampler(SharedRead, optuna.samplers.BaseSampler):
    """Wraps a plain Optuna sampler: asks it again while it proposes a parameter set the study already holds,
    and after ``PROPOSAL_ATTEMPTS`` takes a random unseen member, so duplicates are rejected before they
    are stored (only two workers proposing the same set at the same instant can still collide)."""

    def __init__(self, inner: optuna.samplers.BaseSampler, space: SearchSpace, seed: int | None) -> None:
        self.inner = inner
        self.space = space
        self.distributions = space_distributions(space)
        self.rng = random.Random(seed)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return dict(self.distributions)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        others = self.other_trials(study, trial)
        if is_fixed(trial):
            return {}
        seen = {params_key(t.params) for t in others}  # whatever their state (running ones included)
        for _ in range(PROPOSAL_ATTEMPTS):
            params = self._propose(study, trial)
            if params_key(params) not in seen:
                return params
        for _ in range(100 * PROPOSAL_ATTEMPTS):
            params = {knob.name: self.rng.choice(knob.choices) for knob in self.space.knobs()}
            if params_key(params) not in seen:
                return params
        return params  # (almost) every member is in the study; the evaluator's duplicate check prunes it

    def _propose(self, study, trial) -> dict[str, Any]:
        inner_space = self.inner.infer_relative_search_space(study, trial)
        params = dict(self.inner.sample_relative(study, trial, inner_space)) if inner_space else {}
        for name, distribution in self.distributions.items():
            if name not in params:
                params[name] = self.inner.sample_independent(study, trial, name, distribution)
        return params

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def make_sampler(
    name: str, seed: int | None, *, space: SearchSpace, objectives: Sequence, budgets: Mapping[str, float] | None = None,
    batch: int = 1, latency_predictor=None,
) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` for a study over ``space`` with ``objectives`` (``search.objectives.Objective``)
    and ``budgets`` (budget name -> limit); ``latency_predictor`` (a ``profiling.LatencyPredictor``) makes
    latency cheap to screen."""
    if name == "cheap-first":
        return CheapFirstSampler(space, objectives, budgets or {}, cheap=cheap_function(batch, latency_predictor), seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "nsga2":
            inner = optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)
        elif name == "tpe":
            # 20 random start-up trials (Optuna's default: 10) reach 0.994 vs 0.980 of the exhaustive
            # hypervolume at 100 trials, median of 30 seeds on a 512-member space
            inner = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=20)
        elif name == "gp":
            inner = optuna.samplers.GPSampler(seed=seed)
        elif name == "random":
            inner = optuna.samplers.RandomSampler(seed=seed)
        else:
            raise UserError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return DistinctSampler(inner, space, seed)
