"""One worker's loop: run trials until the study holds ``--trials`` COMPLETE ones, failing dead workers' trials.

Bookkeeping per trial is kept to Optuna's own reads (its ``_CachedStorage`` re-reads only unfinished and
new trials), one read of ours that the sampler and the duplicate check share (``search.parameters.SharedRead``),
and two writes of our own (``search.storage.write_trial``); stale trials are failed by
``study.optimize`` before every trial, and here only while waiting for other workers.
"""

from __future__ import annotations

import datetime
import time
import warnings
from typing import Callable, Sequence

import optuna
from optuna.trial import TrialState

from hrvit_nas import UserError
from search.evaluator import TrialEvaluator, TrialFailed
from search.samplers import derive_seed, make_sampler
from search.settings import SearchSettings

_wall_clock = time.time  # the clock of a run's time budget (``stop_at``); tests replace it

MAX_FAILURES_IN_A_ROW = 10


def deadline(max_minutes: float | None) -> float | None:
    """The ``stop_at`` of a run bounded to ``max_minutes`` from now, on the clock ``run_worker`` reads (None: unbounded)."""
    if max_minutes is None:
        return None
    if isinstance(max_minutes, bool) or not isinstance(max_minutes, (int, float)) or not max_minutes > 0:
        raise UserError(f"--max-minutes {max_minutes!r}: give a positive number of minutes")
    return _wall_clock() + 60.0 * max_minutes


def trial_counts(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for trial in trials:
        counts[trial.state] += 1
    return counts


def has_heartbeat(storage) -> bool:
    return isinstance(storage, optuna.storages.RDBStorage) and bool(storage.get_heartbeat_interval())


def fail_trials_dead_before_their_first_heartbeat(study: optuna.Study, storage: optuna.storages.RDBStorage) -> None:
    """Fail RUNNING trials that drew no parameters and are older than the heartbeat grace period.

    Optuna turns a trial stale only once it has a heartbeat; a worker killed between creating its trial and
    that first beat leaves the trial RUNNING forever, and every other worker would wait for it to finish. A
    live trial of ours draws its parameters first thing, so one without any after the grace period is dead;
    with no parameters there is nothing to retry, and the slot goes back to the search."""
    grace_s = storage.grace_period or 2 * storage.get_heartbeat_interval()
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not trial.params and trial.datetime_start and (now - trial.datetime_start).total_seconds() > grace_s:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def run_worker(
    settings: SearchSettings,
    study_name: str,
    storage,
    n_trials: int,
    *,
    worker: int = 0,
    evaluator: TrialEvaluator | None = None,
    callbacks: Sequence[Callable] = (),
    poll_s: float = 0.5,
    stop_at: float | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``n_trials`` COMPLETE trials (those of earlier runs count), or
    until the wall clock passes ``stop_at`` (``deadline``; no trial starts after it).

    The sampler seed comes from ``(settings.seed, trials in the study, worker)``: a resume continues.
    Trials RUNNING elsewhere are waited for when the storage has a heartbeat (a dead worker's trial
    turns stale, is failed and re-queued); without one they are not waited for.
    """
    study = optuna.load_study(study_name=study_name, storage=storage)
    evaluator = evaluator or TrialEvaluator(settings)
    study.sampler = make_sampler(
        settings.sampler, derive_seed(settings.seed, len(study.get_trials(deepcopy=False)), worker), space=settings.space,
        objectives=settings.objective_specs, budgets=settings.budgets, batch=settings.batch, latency_predictor=evaluator.predictor,
    )
    evaluator.n_trials = n_trials
    heartbeat = has_heartbeat(storage)
    last: list[optuna.trial.FrozenTrial] = []
    failures_in_a_row = duplicates_in_a_row = 0
    while True:
        trials = study.get_trials(deepcopy=False)
        counts = trial_counts(trials)
        complete, running = counts[TrialState.COMPLETE], counts[TrialState.RUNNING]
        if complete >= n_trials or (stop_at is not None and _wall_clock() >= stop_at):
            return study
        if complete + running >= n_trials and counts[TrialState.WAITING] == 0:
            if not heartbeat:
                return study
            with warnings.catch_warnings():  # study.optimize fails stale trials before each trial; while waiting, here
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            fail_trials_dead_before_their_first_heartbeat(study, storage)
            time.sleep(poll_s)
            continue
        for reader in (study.sampler, evaluator):  # the proposal and its duplicate check use this read
            reader.share_read(trials)
        study.optimize(evaluator, n_trials=1, catch=(TrialFailed,), callbacks=[*callbacks, lambda _s, t: last.append(t)])
        if last and last[-1].state != TrialState.PRUNED:  # a pruned placeholder neither fails nor succeeds
            failures_in_a_row = failures_in_a_row + 1 if last[-1].state == TrialState.FAIL else 0
        duplicates_in_a_row = duplicates_in_a_row + 1 if last and "duplicate_of" in last[-1].user_attrs else 0
        if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise UserError(
                f"{failures_in_a_row} trials in a row failed (last: {last[-1].user_attrs.get('failure_reason', 'unknown')}); "
                "fix the cause (see failure_reason in the study) and re-run the same command to resume"
            )
        if duplicates_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise UserError(
                f"the last {duplicates_in_a_row} proposals were all architectures the study already holds: the space "
                f"({settings.space.size()} members) is nearly exhausted; lower --trials or widen the space"
            )
