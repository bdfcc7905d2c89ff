"""Estimators and objectives from a user's own package, found through entry points (also by spawned workers)."""

from __future__ import annotations

import textwrap

import pytest
from optuna.trial import TrialState
from test_search import _one_thread_shared_cache, run_cli, sqlite_url, space_file, tiny_settings  # noqa: F401  (fixtures)

PLUGIN = textwrap.dedent('''
    from search.estimators import AccuracyEstimator
    from search.objectives import Objective


    class DepthEstimator(AccuracyEstimator):
        metric_name = "total depth (test proxy)"
        unit = "blocks"

        def __init__(self, input_size, device, seed):
            pass

        def estimate(self, config, trial=None):
            return float(sum(map(sum, config.depths)))


    class FlakyEstimator(DepthEstimator):
        def estimate(self, config, trial=None):
            if config.depths[0][0] == 2:
                raise RuntimeError("simulated out of memory")
            return super().estimate(config, trial)


    def window_sum(config):
        return float(sum(config.window_sizes))


    WINDOWS = Objective("windows", "minimize", "px", "windows_px", measure=window_sum)
''')
ENTRY_POINTS = textwrap.dedent('''
    [hrvit_nas.estimators]
    depth-count = hrvit_test_plugin:DepthEstimator
    flaky = hrvit_test_plugin:FlakyEstimator

    [hrvit_nas.objectives]
    windows = hrvit_test_plugin:WINDOWS
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed distribution ``hrvit-test-plugin`` (module + dist-info on sys.path), as pip would leave it."""
    site = tmp_path / "site"
    info = site / "hrvit_test_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "hrvit_test_plugin.py").write_text(PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hrvit-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))  # spawned workers inherit the parent's sys.path
    return site


def test_entry_point_estimator_and_objective_run_in_two_workers(tmp_path, plugin):
    from search import estimator_names, load_trials, run_search, trial_config

    assert {"depth-count", "flaky", "zero-cost", "supernet", "short-train"} <= set(estimator_names())
    settings = tiny_settings(objectives="accuracy,windows", estimator="depth-count", sampler="random")
    study = run_search(settings, "plugins", sqlite_url(tmp_path), 4, workers=2)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    for trial in complete:
        config = trial_config(trial)
        assert trial.values == [float(sum(map(sum, config.depths))), float(sum(config.window_sizes))]
    assert study.metric_names == ["total depth (test proxy) (blocks)", "windows (px)"]
    frame = load_trials(sqlite_url(tmp_path), "plugins")
    assert "accuracy [total depth (test proxy) (blocks)]" in frame.columns


def test_entry_point_estimator_by_name_from_the_cli(tmp_path, plugin, space_file, capsys):
    code, out = run_cli(["search", "--study", "cli", "--run-dir", str(tmp_path / "run"), "--space", str(space_file),
                         "--objectives", "accuracy,flops", "--estimator", "depth-count", "--device", "cpu",
                         "--trials", "2", "--no-progress"], capsys)
    assert code == 0, out.err
    assert "study 'cli': 2 trials" in out.out


def test_failed_trials_are_recorded_with_the_reason_and_the_study_continues(tmp_path, plugin):
    from search import run_search

    settings = tiny_settings(objectives=["accuracy", "params"], estimator="flaky", sampler="random", seed=3)
    study = run_search(settings, "flaky", sqlite_url(tmp_path), 4)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert failed, "this seed samples deep stems"
    for trial in failed:
        assert trial.params["depth_m0_b0"] == 2
        assert trial.user_attrs["failure_reason"] == "RuntimeError: simulated out of memory"
        assert "params_m" in trial.user_attrs["measurements"]  # what was measured before the crash
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
