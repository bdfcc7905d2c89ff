"""A trial's parameters as the samplers see them: one value per knob, the distribution of each knob, and
the key that recognises a parameter set the study already holds. Both the plain samplers
(``search.samplers``) and the cheap-first sampler (``search.screening``) use these, so they live below both.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from hrvit_space import SearchSpace


def params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True)


def knob_distribution(choices: tuple) -> BaseDistribution:
    """Evenly spaced integer choices (depths 1..3, ratios 2/4) are ordinal: stepped integers whose order a
    sampler can exploit; other choice sets are categorical."""
    steps = {b - a for a, b in zip(choices, choices[1:])}
    if len(choices) > 1 and all(isinstance(c, int) and not isinstance(c, bool) for c in choices) and len(steps) == 1:
        return IntDistribution(choices[0], choices[-1], step=steps.pop())
    return CategoricalDistribution(choices)


def space_distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    return {knob.name: knob_distribution(knob.choices) for knob in space.knobs()}


def is_fixed(trial: optuna.trial.FrozenTrial) -> bool:
    """An enqueued trial (baseline, retried trial of a dead worker) has its parameters already."""
    return "fixed_params" in trial.system_attrs


class SharedRead:
    """Takes the worker loop's read of the study for the next trial instead of reading it again.

    On the default SQLite storage each read of the study's trials costs a few milliseconds (Optuna re-reads
    the unfinished ones), and the loop has just read them to count trials. The sampler takes the read for
    its proposal: a trial another worker creates in between is missed, and the duplicate check, which then
    reads again, prunes a collision before it is measured. The duplicate check takes it only when nothing
    can have changed since (``search.proposal.refuse_surplus_or_duplicate``)."""

    _shared: list[optuna.trial.FrozenTrial] | None = None

    def share_read(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        self._shared = trials

    def take_shared_read(self) -> list[optuna.trial.FrozenTrial] | None:
        """The shared read, once (``None`` when there is none)."""
        trials, self._shared = self._shared, None
        return trials

    def other_trials(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> list[optuna.trial.FrozenTrial]:
        """Every trial of ``study`` but ``trial``: the shared read, else a fresh one."""
        trials = self.take_shared_read()
        if trials is None:
            trials = study.get_trials(deepcopy=False)
        return [t for t in trials if t.number != trial.number]
