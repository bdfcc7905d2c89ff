"""A trial's architecture: drawn from the sampler, stored in one write, refused when surplus or duplicate.

Every proposal is an architecture the study has not seen (``search.samplers``): duplicates are rejected
before a trial is stored, so ``--trials N`` means N distinct measured architectures. Two workers that
propose the same architecture at the same instant are the one exception: the later trial is PRUNED
(``duplicate_of``) unmeasured. Several processes keep the count exact the same way: a trial started
when ``--trials`` are already complete or running is PRUNED unmeasured (``surplus``), so the study
never holds more than ``--trials`` COMPLETE trials (and at most workers - 1 such placeholders).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from hrvit_space import ArchConfig, SearchSpace
from search.parameters import space_distributions
from search.storage import write_trial

IN_PLAY = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
PARAMS_WAIT_S = 10.0  # how long a trial waits for an earlier one still in its sampler (a killed one's never come)


def suggest_config(trial: optuna.Trial, space: SearchSpace, user_attrs: dict[str, Any] | None = None) -> ArchConfig:
    """The sampler proposes one value per knob (``search.parameters.knob_distribution``); the space turns
    them into a config. The knobs and ``user_attrs`` (plus the config's own attributes and the sampler's
    ``screening`` statistics of this proposal) are stored in one write (``search.storage.write_trial``)
    when the sampler proposed every knob at once (all samplers of the search do); an enqueued trial
    (a baseline, or a retry of a dead worker's trial, whose parameters are stored already) takes
    Optuna's suggest calls."""
    distributions = space_distributions(space)
    proposed = trial.relative_params  # runs the sampler
    screening = getattr(trial.study.sampler, "screening", {}).pop(trial.number, None)
    user_attrs = {**(user_attrs or {}), **({"screening": screening} if screening is not None else {})}
    if not trial.params and all(name in proposed for name in distributions):
        params = {name: proposed[name] for name in distributions}
        config = space.decode(params)
        write_trial(trial, params={name: (params[name], d) for name, d in distributions.items()},
                    user_attrs={**config_attrs(config), **user_attrs})
        return config
    for name, dist in distributions.items():
        if isinstance(dist, IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, step=dist.step)
        else:
            trial.suggest_categorical(name, dist.choices)
    config = space.decode(trial.params)
    write_trial(trial, user_attrs={**config_attrs(config), **user_attrs})
    return config


def config_attrs(config: ArchConfig) -> dict[str, Any]:
    """The config (``config``), its hash and one readable line for optuna-dashboard (``config_summary``),
    where the nested ``config`` attribute is a long JSON string."""
    depths = " | ".join(",".join(map(str, module)) for module in config.depths)
    summary = (f"depths {depths}; windows {','.join(map(str, config.window_sizes))}; "
               f"mlp ratios {','.join(map(str, config.mlp_ratios))}; channels {','.join(map(str, config.channels))}")
    return {"config": config.to_dict(), "config_summary": summary, "config_hash": config.content_hash()}


def refuse_surplus_or_duplicate(
    trial: optuna.Trial, n_trials: int, budgets: Sequence[str] = (), known: Sequence[optuna.trial.FrozenTrial] | None = None,
) -> None:
    """Prune ``trial`` unmeasured when earlier trials already fill ``n_trials`` or hold its architecture.

    ``known``: the study's trials as read just before ``trial`` was created (``search.parameters.SharedRead``).
    """
    earlier = _earlier_trials(trial, known)
    twin = next((t for t in earlier if t.params == trial.params), None)
    if len(earlier) < n_trials and twin is None:
        return
    for name in budgets:  # unmeasured: every trial carries the same constraint keys
        trial.set_constraint(name, 0.0)
    if len(earlier) >= n_trials:
        trial.set_user_attr("surplus", True)
        raise optuna.TrialPruned(f"{n_trials} trials are already complete or running")
    trial.set_user_attr("duplicate_of", twin.number)
    raise optuna.TrialPruned(f"trial {twin.number} already evaluates this architecture")


def _earlier_trials(trial: optuna.Trial, known: Sequence[optuna.trial.FrozenTrial] | None) -> list[optuna.trial.FrozenTrial]:
    """The trials in play created before ``trial``.

    ``known`` answers when nothing can have changed since it was read: ``trial`` is the next number after it
    and every trial in it had finished (one worker alone: the common case, a read less per trial).
    Otherwise the study is read again. Trial numbers are assigned by the storage in creation order, so of
    several processes racing for the last slot exactly the earliest trials go on. An earlier trial of
    another process may still be in its sampler, with no parameters stored yet; it is waited for (briefly:
    every trial stores its parameters first), else two workers proposing one architecture at the same
    instant would both measure it."""
    if known is not None and trial.number == len(known) and all(t.state.is_finished() for t in known):
        return [t for t in known if t.state in IN_PLAY]
    deadline = time.monotonic() + PARAMS_WAIT_S
    while True:
        earlier = [t for t in trial.study.get_trials(deepcopy=False, states=IN_PLAY) if t.number < trial.number]
        sampling = [t for t in earlier if t.state == TrialState.RUNNING and len(t.params) < len(trial.params)]
        if not sampling or time.monotonic() > deadline:
            return earlier
        time.sleep(0.05)
