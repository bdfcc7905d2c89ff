"""What a trial costs the search itself: one model per trial, no FLOP trace, few storage commits; the
typed measurements and the one table of measured quantities."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy
from optuna.trial import TrialState
from test_search import _one_thread_shared_cache, sqlite_url, tiny_settings  # noqa: F401  (autouse fixture)
from test_search_plugins import plugin  # noqa: F401  (fixture)

import hrvit_space.model as model_module


def test_a_trial_builds_its_model_once_for_timing_and_the_zero_cost_score(tmp_path, monkeypatch):
    from search import run_search

    builds = []
    init = model_module.HRViT.__init__

    def counting_init(self, *args, **kwargs):
        builds.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(model_module.HRViT, "__init__", counting_init)

    def no_trace(*_args, **_kwargs):
        raise AssertionError("the search counts analytically; it never traces FLOPs")

    monkeypatch.setattr("profiling.profiler.count_flops", no_trace)
    monkeypatch.setenv("HRVIT_NAS_CACHE_DIR", str(tmp_path / "fresh-cache"))  # every trial is timed
    settings = tiny_settings(objectives="accuracy,latency", sampler="random", seed=2)
    study = run_search(settings, "once", sqlite_url(tmp_path), 3)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3 and all(t.user_attrs["measurements"]["latency_source"] == "measured" for t in complete)
    assert len(builds) == 3  # before: 6 (the profiler's model and the estimator's seeded copy)


def test_the_zero_cost_score_of_the_shared_model_equals_a_fresh_seeded_build():
    from search import make_estimator

    settings = tiny_settings()
    config = settings.space.smallest()
    estimator = make_estimator("zero-cost", input_size=config.input_size, device="cpu", seed=0, batch=2)
    shared = estimator.build(config)
    shared(__import__("torch").randn(1, config.in_chans, *config.input_size))  # timed meanwhile: weights unchanged
    assert estimator.estimate(config, model=shared) == estimator.estimate(config)


def test_a_trial_commits_a_bounded_number_of_times(tmp_path, monkeypatch):
    from search import run_search

    commits = []

    def count(_connection):
        commits.append(1)

    run_search(tiny_settings(sampler="random"), "commits", sqlite_url(tmp_path), 2)  # storage and study set up
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", count)
    try:
        run_search(tiny_settings(sampler="random"), "commits", sqlite_url(tmp_path), 8)  # resumed: 6 more trials
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "commit", count)
    # before: 45 a trial of the default space (one per knob and attribute); now Optuna's own and two writes
    assert len(commits) / 6 <= 16


def test_measurements_carry_the_units_of_the_one_quantity_table():
    from profiling import QUANTITIES, QUANTITY, Measurements, analytic_counts
    from reports.metrics import MEASUREMENT_UNITS
    from search import BUDGETS, OBJECTIVES

    assert {f.name for f in dataclasses.fields(Measurements)} - {"plugins"} == {q.key for q in QUANTITIES}
    m = Measurements.of_counts(analytic_counts(tiny_settings().space.smallest()))
    m.latency_ms, m.latency_source = 3.5, "measured"
    m.set("windows_px", 7.0)
    stored = m.to_dict()
    assert stored["latency_ms"] == 3.5 and stored["windows_px"] == 7.0 and "energy_mj" not in stored  # unmeasured: absent
    assert Measurements.from_dict(stored) == m
    assert m.units()["latency_ms"] == "ms" and m.units()["params_m"] == "M" and m.units()["gmacs_by_branch"] == "GMACs"
    assert {o.unit for o in OBJECTIVES.values()} <= {q.unit for q in QUANTITIES}
    assert all(OBJECTIVES[name].unit == QUANTITY[OBJECTIVES[name].key].unit for name in OBJECTIVES)
    assert all(budget.unit == QUANTITY[budget.key].unit for budget in BUDGETS.values())
    assert MEASUREMENT_UNITS == {q.key: q.unit for q in QUANTITIES}


def test_a_plug_in_objective_is_a_report_metric(plugin):  # noqa: F811
    from reports.metrics import objective_metric

    metric = objective_metric("windows")
    assert (metric.column, metric.unit, metric.maximize, metric.label) == ("windows_px", "px", False, "windows (px)")
    assert objective_metric("latency").label == "latency (ms)"
    assert objective_metric("uninstalled-objective") is None


def test_the_demo_reaches_its_pareto_plot_report_and_export(tmp_path, capsys):
    """The README's first command, at its smallest (the three baselines at 64x64): search, report, export."""
    from test_search import run_cli

    out = tmp_path / "demo"
    code, printed = run_cli(["demo", "--out", str(out), "--trials", "3", "--input", "64x64", "--device", "cpu", "--threads", "1"], capsys)
    assert code == 0, printed.err
    assert (out / "report" / "report.html").is_file()
    assert (out / "report" / "figures" / "pareto_accuracy_vs_latency_ms.png").is_file()
    exported = next((out / "export").iterdir())
    assert {"config.yaml", "metrics.json"} <= {p.name for p in exported.iterdir()}
    assert f"exported:    {exported / 'config.yaml'}" in printed.out and "time budget" not in printed.out


def test_max_minutes_lets_the_trial_in_flight_finish_starts_no_other_and_a_rerun_continues(tmp_path, monkeypatch):
    import search.worker_loop as worker_loop
    from hrvit_nas import UserError
    from search import run_search

    reads = []
    # read 1 sets the deadline, read 2 lets trial 0 start, every later read is past the deadline
    monkeypatch.setattr(worker_loop, "_wall_clock", lambda: reads.append(1) or (0.0 if len(reads) <= 2 else float("inf")))
    settings, url = tiny_settings(sampler="random", seed=3), sqlite_url(tmp_path)
    study = run_search(settings, "budget", url, 4, max_minutes=1.0)  # the budget runs out while trial 0 is measured
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    monkeypatch.setattr(worker_loop, "_wall_clock", lambda: 0.0)
    study = run_search(settings, "budget", url, 4, max_minutes=1.0)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4 and len(study.get_trials()) == 4
    with pytest.raises(UserError, match="--max-minutes 0"):
        run_search(settings, "budget", url, 4, max_minutes=0)


def test_a_profile_request_for_analytic_counts_equals_the_trace_and_builds_no_model(monkeypatch):
    from hrvit_nas import UserError
    from profiling import ProfileRequest, profile

    config = tiny_settings().space.smallest()
    traced = profile(ProfileRequest(config, device="cpu", measure_latency=False), cache=None)
    builds = []
    init = model_module.HRViT.__init__
    monkeypatch.setattr(model_module.HRViT, "__init__", lambda self, *a, **k: (builds.append(1), init(self, *a, **k))[1])
    analytic = profile(ProfileRequest(config, device="cpu", measure_latency=False, counts="analytic"), cache=None)
    assert (analytic.params, analytic.macs, analytic.macs_by_branch) == (traced.params, traced.macs, traced.macs_by_branch)
    assert builds == [] and analytic.options["counts"] == "analytic" and "counts" not in traced.options
    with pytest.raises(UserError, match="counts 'exact'"):
        profile(ProfileRequest(config, device="cpu", counts="exact"), cache=None)


def test_the_progress_front_size_agrees_with_optuna_best_trials():
    import optuna

    from search.hypervolume import feasible_trials, front_size
    from search.progress import summary

    study = optuna.create_study(directions=["minimize", "maximize"])
    for values in ([1.0, 1.0], [1.0, 1.0], [2.0, 3.0], [2.0, 2.0], [0.5, 0.1], [3.0, 3.0]):  # a tie, dominated points
        study.tell(study.ask(), values)
    assert front_size(feasible_trials(study), study.directions) == len(study.best_trials) == 4
    assert summary(study)["pareto"] == 4



def _trial_with_depth(study, depth: int):
    study.enqueue_trial({"depth": depth})
    trial = study.ask()
    trial.suggest_int("depth", 1, 3)
    return trial


@pytest.mark.parametrize("read_before_twin", [True, False])
def test_the_duplicate_check_finds_a_twin_whether_or_not_the_shared_read_holds_it(read_before_twin):
    """The loop's read is trusted only when nothing can have changed since; a twin created after it (by
    another worker) is still found, so no architecture is measured twice."""
    import optuna

    from search.proposal import refuse_surplus_or_duplicate

    study = optuna.create_study()
    early_read = study.get_trials(deepcopy=False)
    study.add_trial(optuna.trial.create_trial(
        params={"depth": 2}, distributions={"depth": optuna.distributions.IntDistribution(1, 3)}, value=1.0))
    known = early_read if read_before_twin else study.get_trials(deepcopy=False)
    with pytest.raises(optuna.TrialPruned, match="trial 0 already evaluates"):
        refuse_surplus_or_duplicate(_trial_with_depth(study, 2), 10, known=known)
    refuse_surplus_or_duplicate(_trial_with_depth(study, 3), 10, known=study.get_trials(deepcopy=False)[:-1])
    with pytest.raises(optuna.TrialPruned, match="already complete or running"):
        refuse_surplus_or_duplicate(_trial_with_depth(study, 1), 1, known=study.get_trials(deepcopy=False)[:-1])
