"""Search: settings validation, trial records contract, budgets, baselines, failures, estimators, CLI."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from hrvit_nas.errors import UserError
from hrvit_space import ArchConfig, SearchSpace, preset

# Two branches, 32x32 input, 128 members: a trial costs well under a second on one CPU thread.
TINY_SPACE = {
    "base": {
        "channels": [8, 16],
        "depths": [[1], [1, 1]],
        "dim_head": 4,
        "input_size": [32, 32],
        "head": {"kind": "segformer", "width": 16, "num_classes": 4},
    },
    "depths": [[[1, 2]], [[0, 1], [1, 2]]],
    "windows": [[1, 2], [1, 2]],
    "mlp_ratios": [2, 4],
}
# The smallest member of TINY_SPACE has ~0.026 M parameters, the largest ~0.036 M.
MID_PARAMS_BUDGET_M = 0.03


def tiny_space() -> SearchSpace:
    return SearchSpace.from_dict(TINY_SPACE)


def tiny_settings(**overrides):
    from search import SearchSettings

    options = {"space": tiny_space(), "objectives": ["params", "flops"], "device": "cpu"}
    options.update(overrides)
    return SearchSettings(**options)


def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture(autouse=True)
def _one_thread_shared_cache(monkeypatch, tmp_path_factory):
    """One intra-op thread (2 busy cores) and a throwaway profile cache shared by this session's tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("HRVIT_NAS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "profile-cache"))
    monkeypatch.setenv("HRVIT_NAS_THREADS", "1")  # the profiler's thread count (it no longer follows torch's)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objectives": "accuracy,speed"}, "unknown objective.*speed"),
        ({"objectives": "latency,latency"}, "repeats"),
        ({"budgets": {"max_latency_ms": -1.0}}, "impossible budget --max-latency-ms"),
        ({"budgets": {"max_watts": 3.0}}, "unknown budget"),
        ({"sampler": "cmaes"}, "unknown sampler"),
        ({"estimator": "zero-cost"}, "only applies with the accuracy objective"),
        ({"objectives": "accuracy,params", "estimator": "params"}, "already an objective"),
        ({"objectives": "accuracy,latency", "estimator": "oracle"}, "unknown estimator"),
    ],
)
def test_bad_settings_raise_one_clear_error(overrides, message):
    with pytest.raises(UserError, match=message):
        tiny_settings(**overrides)


def test_input_size_re_targets_the_space():
    settings = tiny_settings(input_size=(64, 64))
    assert settings.space.base.input_size == (64, 64)
    assert settings.to_dict()["input_size"] == [64, 64]


# ------------------------------------------------------------------------------ records contract
def test_budgeted_search_records_every_trial_per_the_contract(tmp_path):
    from hrvit_space.model import build_model
    from profiling import count_params
    from search import pareto_trials, run_search, study_settings, trial_config, trials_frame

    settings = tiny_settings(budgets={"max_params_m": MID_PARAMS_BUDGET_M}, baselines=True, seed=1, sampler="random")
    study = run_search(settings, "contract", sqlite_url(tmp_path), 6)

    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    assert [t.user_attrs.get("baseline") for t in trials[:3]] == ["b1", "b2", "b3"]
    space = settings.space
    assert trials[0].params == space.encode(space.nearest(preset("b1")))

    infeasible = 0
    for trial in complete:
        config = trial_config(trial)
        assert config == space.decode(trial.params)
        assert trial.user_attrs["config_hash"] == config.content_hash()
        m = trial.user_attrs["measurements"]
        over = m["params_m"] > MID_PARAMS_BUDGET_M
        assert trial.user_attrs["feasible"] is (not over)
        assert (trial.constraints["max_params_m"] > 0) is over
        assert m["gflops"] == pytest.approx(2 * m["gmacs"])  # counts are analytic: every trial has them
        assert sum(m["gmacs_by_branch"].values()) == pytest.approx(m["gmacs"])
        assert trial.values == [pytest.approx(m["params_m"]), pytest.approx(m["gflops"])]
        assert "fingerprint" not in trial.user_attrs  # nothing was timed, no device involved
        if over:
            infeasible += 1
            assert trial.user_attrs["violations"]["max_params_m"] == pytest.approx(m["params_m"] - MID_PARAMS_BUDGET_M)
        else:
            assert trial.user_attrs["violations"] == {}
    assert 0 < infeasible < 6, "the budget should split this sample"

    # measurements agree with the profiler's own count
    params, _, _ = count_params(build_model(trial_config(complete[0])))
    assert complete[0].user_attrs["measurements"]["params_m"] == pytest.approx(params / 1e6)

    front = pareto_trials(study)
    feasible = [t for t in complete if t.user_attrs["feasible"]]
    assert front and all(t.user_attrs["feasible"] for t in front)
    for member in front:  # nothing feasible dominates a front member
        assert not any(
            all(a <= b for a, b in zip(o.values, member.values)) and o.values != member.values for o in feasible
        )

    settings_attr = study_settings(study)
    assert settings_attr["schema_version"] == 1
    assert settings_attr["objectives"] == [
        {"name": "params", "direction": "minimize", "unit": "M"},
        {"name": "flops", "direction": "minimize", "unit": "GFLOPs"},
    ]
    assert settings_attr["budgets"] == {"max_params_m": MID_PARAMS_BUDGET_M}
    assert SearchSpace.from_dict(settings_attr["space"]) == space
    assert {"input_size", "batch", "device", "estimator", "sampler", "seed", "created"} <= set(settings_attr)

    frame = trials_frame(study)
    assert len(frame) == len(trials)
    for column in ("number", "state", "params_m", "gflops", "feasible", "pareto", "baseline", "config_hash", "config_json", "failure_reason"):
        assert column in frame.columns
    assert set(frame.loc[frame.pareto, "number"]) == {t.number for t in front}
    assert not frame.loc[~frame.feasible, "pareto"].any()
    row = frame.iloc[0]
    assert ArchConfig.from_dict(json.loads(row.config_json)) == trial_config(trials[0])
    assert row.baseline == "b1"


def test_impossible_budget_is_refused_before_anything_is_stored(tmp_path):
    from search import open_storage, run_search

    with pytest.raises(UserError, match="impossible budget --max-params-m.*smallest architecture"):
        run_search(tiny_settings(budgets={"max_params_m": 0.001}), "too-small", sqlite_url(tmp_path), 3)
    assert optuna.get_all_study_names(open_storage(sqlite_url(tmp_path))) == []


def test_energy_without_a_readable_meter_is_refused_before_anything_is_stored(tmp_path, monkeypatch):
    import profiling.energy
    from search import open_storage, run_search

    empty_powercap = tmp_path / "powercap"  # the RAPL sysfs boundary, with no package domain
    empty_powercap.mkdir()
    monkeypatch.setattr(profiling.energy.open_backend, "__defaults__", (empty_powercap,))
    with pytest.raises(UserError, match="energy cannot be measured on this device.*RAPL"):
        run_search(tiny_settings(objectives="energy,params"), "energy", sqlite_url(tmp_path), 2)
    assert optuna.get_all_study_names(open_storage(sqlite_url(tmp_path))) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objectives": "latency,params", "latency_predictor": "missing-predictor.json"}, "latency predictor.*not found"),
        ({"objectives": "accuracy,params", "estimator_options": {"checkpoint": "x.pt"}}, "no option.*checkpoint"),
    ],
)
def test_estimator_and_predictor_errors_come_before_the_study_is_created(tmp_path, overrides, message):
    from search import open_storage, run_search

    with pytest.raises(UserError, match=message):
        run_search(tiny_settings(**overrides), "refused", sqlite_url(tmp_path), 2)
    assert optuna.get_all_study_names(open_storage(sqlite_url(tmp_path))) == []


# ---------------------------------------------------------------------------------- estimators
def test_make_estimator_rejects_unknown_names_and_options():
    from search import make_estimator

    with pytest.raises(UserError, match="unknown estimator 'oracle'.*zero-cost"):
        make_estimator("oracle")
    with pytest.raises(UserError, match="no option.*checkpoint.*allowed:.*batch"):
        make_estimator("zero-cost", checkpoint="x.pt")


def test_zero_cost_score_is_deterministic_and_tells_architectures_apart():
    from search import make_estimator

    space = tiny_space()
    small, large = space.smallest(), space.largest()
    first = make_estimator("zero-cost", input_size=(32, 32), device="cpu", seed=0, batch=4)
    again = make_estimator("zero-cost", input_size=(32, 32), device="cpu", seed=0, batch=4)
    score = first.estimate(small)
    assert math.isfinite(score)
    assert again.estimate(small) == score
    assert first.estimate(large) != score


def test_accuracy_search_stores_the_estimator_score(tmp_path):
    from search import make_estimator, run_search, trial_config

    settings = tiny_settings(objectives="accuracy,flops", estimator_options={"batch": 4}, seed=2)
    study = run_search(settings, "zc", sqlite_url(tmp_path), 2)
    estimator = make_estimator("zero-cost", input_size=(32, 32), device="cpu", seed=2, batch=4)
    for trial in study.trials:
        assert trial.user_attrs["estimator"] == "zero-cost"
        assert trial.values[0] == trial.user_attrs["measurements"]["accuracy"] == estimator.estimate(trial_config(trial))
        assert trial.user_attrs["config_summary"].startswith("depths ")  # readable in optuna-dashboard
    assert study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    # optuna-dashboard reads the objective names from the storage: the proxy is named, never plain "accuracy"
    stored = optuna.load_study(study_name="zc", storage=sqlite_url(tmp_path))
    assert stored.metric_names == ["NASWOT score (log-det)", "flops (GFLOPs)"]


def test_load_trials_gives_one_flat_frame_with_units_in_the_column_names(tmp_path):
    from search import load_trials, run_search

    study = run_search(tiny_settings(objectives="accuracy,flops", estimator_options={"batch": 4}), "frame", sqlite_url(tmp_path), 2)
    frame = load_trials(sqlite_url(tmp_path), "frame")
    assert list(frame.number) == [t.number for t in study.trials]
    for column in ("accuracy [NASWOT score (log-det)]", "gflops", "params_m", "gmacs_by_branch.0", "duration_s"):
        assert column in frame.columns
    assert load_trials(study).columns.tolist() == frame.columns.tolist()
    with pytest.raises(UserError, match="give the study name"):
        load_trials(sqlite_url(tmp_path))
    run_search(tiny_settings(), "counts", sqlite_url(tmp_path), 1)
    assert not any(c.startswith("accuracy") for c in load_trials(sqlite_url(tmp_path), "counts").columns)


# --------------------------------------------------------------------------------- hypervolume
def test_hypervolume_counts_feasible_trials_only():
    from search.progress import describe, normalized_hypervolume, summary

    study = optuna.create_study(directions=["minimize", "minimize"])
    for values in ([0.0, 1.0], [1.0, 0.0]):
        study.tell(study.ask(), values)
    # front (0,1),(1,0); box from the ideal (0,0) to 10% past the nadir: 1.1 x 1.1
    expected = (1.1 * 0.1 + 0.1 * 1.1 - 0.1 * 0.1) / 1.21
    assert normalized_hypervolume(study) == pytest.approx(expected)
    trial = study.ask()
    trial.set_constraint("max_params_m", 1.0)  # infeasible: must not count even though it dominates
    study.tell(trial, [0.5, 0.5])
    assert normalized_hypervolume(study) == pytest.approx(expected)
    assert "feasible 2  pareto 2" in describe(summary(study))


# ------------------------------------------------------------------------------------------ CLI
def run_cli(argv, capsys):
    from hrvit_nas.cli import main

    code = main(argv)
    return code, capsys.readouterr()


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE))
    return path


def test_cli_runs_and_resumes_a_small_search(tmp_path, space_file, capsys):
    base = ["search", "--study", "cli", "--run-dir", str(tmp_path / "run"), "--space", str(space_file),
            "--objectives", "params,flops", "--device", "cpu", "--no-progress"]
    code, out = run_cli([*base, "--trials", "2"], capsys)
    assert code == 0, out.err
    assert "feasible Pareto front" in out.out
    assert (tmp_path / "run" / "study.db").is_file()
    code, out = run_cli([*base, "--trials", "3"], capsys)
    assert code == 0, out.err
    assert "study 'cli': 3 trials" in out.out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--objectives", "accuracy,speed"], "unknown objective"),
        (["--max-gflops", "0"], "impossible budget --max-gflops"),
        (["--storage", "postgresql://hrvit:x@127.0.0.1:1/none"], "cannot open the study storage"),
        (["--storage", "redis://localhost/0"], "unknown scheme"),
        (["--input", "big"], "--input 'big'"),
        (["--estimator-option", "batch"], "KEY=VALUE"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, space_file, capsys, extra, message):
    argv = ["search", "--study", "bad", "--run-dir", str(tmp_path), "--space", str(space_file), "--device", "cpu", "--no-progress", *extra]
    code, out = run_cli(argv, capsys)
    assert code == 2
    assert out.err.startswith("error: ") and message in out.err
    assert "Traceback" not in out.err


def test_cli_malformed_space_file_and_mismatched_resume_keep_the_study(tmp_path, space_file, capsys):
    from conftest import settled_bytes  # here: worker subprocesses import this module with the repo's conftest first on the path

    bad_space = tmp_path / "bad.yaml"
    bad_space.write_text("depths: [[[1, 2]]\n")
    code, out = run_cli(["search", "--study", "s", "--space", str(bad_space), "--run-dir", str(tmp_path)], capsys)
    assert code == 2 and "not valid YAML" in out.err

    base = ["search", "--study", "s", "--run-dir", str(tmp_path), "--space", str(space_file), "--device", "cpu", "--no-progress"]
    assert run_cli([*base, "--objectives", "params,flops", "--trials", "2"], capsys)[0] == 0
    db = tmp_path / "study.db"
    before = settled_bytes(db)
    code, out = run_cli([*base, "--objectives", "flops,params", "--trials", "4"], capsys)
    assert code == 2 and "created with other settings" in out.err and "objectives" in out.err
    code, out = run_cli([*base, "--objectives", "params,flops", "--max-params-m", "1", "--trials", "4"], capsys)
    assert code == 2 and "budgets" in out.err
    from search import open_study

    study = open_study("s", f"sqlite:///{db}")
    assert len(study.trials) == 2 and db.read_bytes() == before
