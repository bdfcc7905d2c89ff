"""The cheap-first sampler screens a latency budget with the latency predictor: no measurement is spent
on a candidate the predictor already puts over the budget."""

from __future__ import annotations

import dataclasses
import itertools
import statistics

from optuna.trial import TrialState
from test_latency_predictor import SPACE, table_predictor
from test_search import _one_thread_shared_cache, sqlite_url  # noqa: F401  (autouse fixture)


def test_predicted_latency_budget_is_screened_before_measuring(tmp_path):
    from profiling.fingerprint import device_fingerprint
    from profiling.runtimes import runtime_version
    from search import SearchSettings, run_search

    # A block table for this machine, not a measured build: under load a 4-config build can fit a constant
    # (no budget to screen), and what is under test is the sampler's use of the predictor, not the predictor.
    predictor = dataclasses.replace(table_predictor(), fingerprint=device_fingerprint("cpu", threads=1, volatile=False),
                                    runtime_version=runtime_version("eager"))
    path = tmp_path / "predictor.json"
    predictor.save(path)
    members = [SPACE.decode(dict(zip([k.name for k in SPACE.knobs()], values)))
               for values in itertools.product(*(k.choices for k in SPACE.knobs()))]
    predicted = [predictor.predict(c) for c in members]
    budget = statistics.median(predicted)  # about half the space is over it (ties at the median stay within)
    within = sum(ms <= budget for ms in predicted)
    assert within < len(members)
    settings = SearchSettings(space=SPACE, objectives="latency,params", budgets={"max_latency_ms": budget},
                              latency_predictor=str(path), device="cpu")
    study = run_search(settings, "screened", sqlite_url(tmp_path), 6)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    for trial in complete:
        assert trial.user_attrs["measurements"]["latency_source"] == "predictor"
        assert trial.user_attrs["feasible"], "the sampler proposed a member the predictor puts over the budget"
        assert trial.user_attrs["screening"]["candidates"] <= within  # only members the predictor puts within budget


# ------------------------------------------------------------------ proposals of the cheap-first sampler
def _accuracy_like(config) -> float:
    """Stands in for a measured accuracy: grows with compute, with a fixed per-member deviation."""
    from search.samplers import cheap_measurements

    return 100 * cheap_measurements(config)["gflops"] + int(config.content_hash()[:6], 16) % 100 / 1000


def _search(space, trials: int, budgets=None, seed: int = 0, storage=None):
    import optuna

    from search.objectives import OBJECTIVES
    from search.proposal import suggest_config
    from search.samplers import cheap_measurements, make_sampler

    specs = [OBJECTIVES["accuracy"], OBJECTIVES["flops"]]
    sampler = make_sampler("cheap-first", seed, space=space, objectives=specs, budgets=budgets or {})
    storage = storage or optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s", directions=[s.direction for s in specs],
                                sampler=sampler, load_if_exists=True)

    def objective(trial):
        config = suggest_config(trial, space)
        gflops = cheap_measurements(config)["gflops"]
        for limit in (budgets or {}).values():
            trial.set_constraint("max_gflops", gflops - limit)
        return _accuracy_like(config), gflops

    study.optimize(objective, n_trials=trials)
    return study, sampler


def test_cheap_first_never_proposes_a_stored_member_and_keeps_a_flops_budget():
    from search.parameters import params_key
    from search.samplers import cheap_measurements
    from test_search import tiny_space

    space = tiny_space()
    flops = sorted(cheap_measurements(space.decode(p))["gflops"] for p in _members(space))
    limit = flops[len(flops) // 2 - 1]  # half the 64 members meet it
    study, _ = _search(space, 24, budgets={"max_gflops": limit})
    keys = [params_key(t.params) for t in study.trials]
    assert len(set(keys)) == len(keys) == 24
    assert all(cheap_measurements(space.decode(t.params))["gflops"] <= limit for t in study.trials)


def test_a_new_sampler_on_a_stored_study_continues_its_predictors_instead_of_starting_over():
    import optuna

    from search.parameters import params_key
    from search.screening import STARTUP
    from test_search import tiny_space

    space = tiny_space()
    storage = optuna.storages.InMemoryStorage()
    study, _ = _search(space, STARTUP + 2, seed=1, storage=storage)
    stored = {params_key(t.params) for t in study.trials}
    study, _ = _search(space, 3, seed=2, storage=storage)  # a new process resuming the stored study
    new = study.trials[-3:]
    assert [t.user_attrs["screening"]["phase"] for t in new] == ["screened"] * 3, "resume replayed the start-up"
    assert not stored & {params_key(t.params) for t in new}


def _members(space):
    import itertools

    return [dict(zip([k.name for k in space.knobs()], values)) for values in itertools.product(*(k.choices for k in space.knobs()))]


# ------------------------------------------------------------------------- expected improvement
def test_expected_improvement_of_an_exact_point_is_its_hypervolume_gain():
    import moocore
    import numpy as np

    from search.hypervolume import expected_improvement

    rng = np.random.default_rng(0)
    for dims in (2, 3):
        front = rng.random((25, dims))
        reference = np.full(dims, 1.1)
        candidates = rng.random((40, dims)) - 0.1
        gains = expected_improvement(candidates, np.zeros_like(candidates), front, reference)
        before = moocore.hypervolume(front, ref=reference)
        exact = [moocore.hypervolume(np.vstack([front, c]), ref=reference) - before for c in candidates]
        np.testing.assert_allclose(gains, exact, atol=1e-12)


def test_expected_improvement_of_an_uncertain_point_is_the_average_gain_over_its_outcomes():
    import moocore
    import numpy as np

    from search.hypervolume import expected_improvement

    rng = np.random.default_rng(1)
    front, reference = rng.random((15, 3)), np.full(3, 1.1)
    mean, std = np.array([0.4, 0.5, 0.45]), np.array([0.2, 0.0, 0.1])  # the second objective is exact
    outcomes = mean + std * rng.standard_normal((20_000, 3))
    before = moocore.hypervolume(front, ref=reference)
    sampled = np.mean([moocore.hypervolume(np.vstack([front, o]), ref=reference) - before for o in outcomes])
    (expected,) = expected_improvement(mean[None], std[None], front, reference)
    assert abs(expected - sampled) < 0.03 * sampled
