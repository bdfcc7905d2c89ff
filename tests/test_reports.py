"""Reports from a small real study: every figure type (headless), tables, the HTML page, determinism, CLI."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from hrvit_space import ArchConfig, HeadConfig, SearchSpace
from search.records import pareto_trials
from search.study import SearchSettings, load_or_create_study

FINGERPRINT = {"device": "cpu", "cpu": "test-cpu", "torch": "2.13.0", "threads": 2}
LATENCY_BUDGET_MS = 6.0


def tiny_space() -> SearchSpace:
    base = ArchConfig(
        channels=(8, 16, 32, 64), depths=((1,), (1, 1), (1, 1, 1), (1, 1, 1, 1)), window_sizes=(1, 1, 1, 1),
        mlp_ratios=(2, 2, 2, 2), dim_head=8, head=HeadConfig(width=16, num_classes=150), input_size=(64, 64),
    )
    depths = [[(1, 2)] * len(module) for module in base.depths]
    return SearchSpace(base, depths, [(1, 2)] * 4, [(2, 4)] * 4)


def two_branch_space() -> SearchSpace:
    """The smallest HRViT layout: quick to trace, count and export."""
    base = ArchConfig(channels=(8, 16), depths=((1,), (1, 1)), window_sizes=(1, 1), mlp_ratios=(2, 2), dim_head=8,
                      head=HeadConfig(width=16, num_classes=150), input_size=(32, 32))
    return SearchSpace(base, [[(1,)], [(1, 2), (1, 2)]], [(1,), (1, 2)], [(2, 4), (2, 4)])


def fake_measurements(config: ArchConfig, rng: random.Random) -> dict:
    """Cheap, monotone stand-ins for the profiler and the estimator (deeper/wider: slower, more accurate)."""
    per_branch = {
        str(b): sum(m[b] for m in config.depths if b < len(m)) * config.channels[b] ** 2 * (1 + config.mlp_ratios[b]) / 1e6
        for b in range(config.num_branches)
    }
    params = sum(per_branch.values())
    gmacs = params * 0.8 + sum(config.window_sizes) * 0.01
    latency = 1.0 + 40 * gmacs * (1 + 0.05 * rng.random())
    return {
        "params_m": params, "gmacs": gmacs, "gflops": 2 * gmacs, "latency_ms": latency, "latency_source": "measured",
        "energy_mj": 0.3 * latency, "accuracy": 1 - math.exp(-8 * params) + 0.02 * rng.random(),
        "params_m_by_branch": per_branch,
        "gmacs_by_branch": {k: v * 0.8 for k, v in per_branch.items()},
        "gmacs_by_component": {"stem": 0.01, "attention": gmacs * 0.4, "mlp": gmacs * 0.5, "fusion": gmacs * 0.1 - 0.01},
    }


def make_study(storage: str, name: str = "tiny", objectives=("accuracy", "latency", "energy"),
               budgets: dict | None = None, trials: int = 16, seed: int = 0, space: SearchSpace | None = None,
               breakdowns: bool = True) -> optuna.Study:
    """A study exactly as `hrvit-nas search` stores it (settings, user_attrs, constraints), with fake measurements."""
    budgets = {"max_latency_ms": LATENCY_BUDGET_MS} if budgets is None else budgets
    space = space or tiny_space()
    settings = SearchSettings(space=space, objectives=list(objectives), budgets=budgets, device="cpu", seed=seed)
    study = load_or_create_study(settings, name, storage)
    distributions = {knob.name: CategoricalDistribution(knob.choices) for knob in space.knobs()}
    rng = random.Random(seed)
    for number in range(trials):
        config = space.largest() if number == 0 else space.sample(rng)
        params = space.encode(config)
        m = fake_measurements(config, rng)
        if not breakdowns:  # as stored by a search that did not record them
            m = {k: v for k, v in m.items() if not k.endswith(("_by_branch", "_by_component"))}
        over = {k: m[b.removeprefix("max_")] - v for k, v in budgets.items() for b in [k] if m[b.removeprefix("max_")] > v}
        user_attrs = {
            "config": config.to_dict(), "config_hash": config.content_hash(), "measurements": m,
            "fingerprint": FINGERPRINT, "estimator": settings.estimator, "feasible": not over, "violations": over,
        }
        if number == 0:
            user_attrs["baseline"] = "b1"
        if number == trials - 1:  # one crashed trial, as the search records it
            user_attrs = {"config": config.to_dict(), "measurements": {}, "failure_reason": "RuntimeError: out of memory"}
            study.add_trial(create_trial(state=TrialState.FAIL, params=params, distributions=distributions, user_attrs=user_attrs))
            continue
        constraints = {k: m[k.removeprefix("max_")] - v for k, v in budgets.items()}
        values = [m[{"accuracy": "accuracy", "latency": "latency_ms", "energy": "energy_mj", "params": "params_m", "flops": "gflops"}[o]] for o in objectives]
        study.add_trial(create_trial(values=values, params=params, distributions=distributions, user_attrs=user_attrs,
                                     constraints=constraints or None))
    return study


@pytest.fixture(scope="module")
def study_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('study') / 'study.db'}"
    make_study(url)
    return url


@pytest.fixture(scope="module")
def report_dir(study_url, tmp_path_factory) -> Path:
    from reports.report import write_report
    from reports.study_data import load_study_data

    out = tmp_path_factory.mktemp("report")
    write_report(load_study_data("tiny", study_url), out)
    return out


def run_cli(argv: list[str]) -> int:
    """`hrvit-nas ...` as a user runs it (UserError -> message on stderr, exit 2)."""
    from hrvit_nas.cli import main

    return main(argv)


EXPECTED_FIGURES = {
    "pareto_accuracy_vs_latency_ms", "pareto_accuracy_vs_energy_mj", "pareto_accuracy_vs_params_m",
    "pareto_accuracy_vs_gflops", "pairwise_objectives", "hypervolume_history", "sensitivity_latency_ms",
    "sensitivity_accuracy", "branch_breakdown",
}


def test_every_figure_type_is_rendered_as_png_and_svg(report_dir):
    figures = report_dir / "figures"
    assert {p.stem for p in figures.glob("*.png")} == EXPECTED_FIGURES
    assert {p.stem for p in figures.glob("*.svg")} == EXPECTED_FIGURES
    for stem in EXPECTED_FIGURES:
        assert (figures / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        root = ET.parse(figures / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")
    assert not list(figures.glob(".*"))  # no temporaries left behind


def test_pareto_plot_shows_feasibility_front_budget_and_baselines(study_url):
    from reports.metrics import BY_COLUMN
    from reports.plots import pareto_plot
    from reports.study_data import load_study_data

    data = load_study_data("tiny", study_url)
    fig = pareto_plot(data, BY_COLUMN["latency_ms"], BY_COLUMN["accuracy"])
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    complete = data.complete
    n_infeasible = int((~complete["feasible"]).sum())
    n_front = len(pareto_trials(data.study))
    assert n_infeasible > 0 and n_front > 1
    assert f"infeasible ({n_infeasible})" in labels
    assert f"Pareto front ({n_front})" in labels
    assert f"feasible ({len(data.feasible) - n_front})" in labels
    assert f"budget {LATENCY_BUDGET_MS:g} ms" in labels
    budget_lines = [line for line in ax.get_lines() if list(line.get_xdata()) == [LATENCY_BUDGET_MS] * 2]
    assert len(budget_lines) == 1
    front_line = next(line for line in ax.get_lines() if line.get_label() == "front (this view)")
    assert max(front_line.get_xdata()) <= LATENCY_BUDGET_MS  # the front is drawn through feasible trials only
    assert "HRViT-b1" in [text.get_text() for text in ax.texts]


def test_two_objective_study_has_no_pairwise_figure_and_front_equals_study_front(tmp_path):
    from reports.metrics import BY_COLUMN
    from reports.plots import figure_builders, pareto_plot
    from reports.study_data import load_study_data

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = make_study(url, name="two", objectives=("accuracy", "latency"), budgets={}, trials=10)
    data = load_study_data("two", url)
    pairwise = dict(figure_builders(data))["pairwise_objectives"]
    assert pairwise() is None
    line = next(l for l in pareto_plot(data, BY_COLUMN["latency_ms"], BY_COLUMN["accuracy"]).axes[0].get_lines())
    front = sorted(t.values[1] for t in pareto_trials(study))
    assert sorted(set(line.get_xdata())) == pytest.approx(front)


def test_hypervolume_history_never_decreases(study_url):
    from reports.plots import hypervolume_plot
    from reports.study_data import load_study_data

    data = load_study_data("tiny", study_url)
    xs, ys = hypervolume_plot(data).axes[0].get_lines()[0].get_data()
    complete = sorted(int(n) for n in data.complete["number"])
    assert list(xs) == complete
    assert ys[-1] > 0 and all(b >= a for a, b in itertools.pairwise(ys))


def test_branch_breakdown_is_counted_when_the_study_lacks_it(tmp_path):
    from reports.plots import branch_breakdown_plot, trial_breakdowns
    from reports.study_data import load_study_data
    from search.records import trial_config

    url = f"sqlite:///{tmp_path / 's.db'}"
    study = make_study(url, name="bare", budgets={}, trials=2, space=two_branch_space(), breakdowns=False)
    data = load_study_data("bare", url)
    counted = trial_breakdowns(data, [0])[0]
    assert set(counted["params_m_by_branch"]) >= {"0", "1"}  # profiling's keys, as the search stores them
    from hrvit_space.model import build_model

    params = sum(p.numel() for p in build_model(trial_config(study.trials[0])).parameters()) / 1e6
    assert sum(counted["params_m_by_branch"].values()) == pytest.approx(params)
    assert sum(counted["gmacs_by_branch"].values()) > 0 and counted["gmacs_by_component"]
    assert branch_breakdown_plot(data) is not None


def test_sensitivity_uses_each_branch_knob(study_url):
    from reports.plots import knob_table
    from reports.study_data import load_study_data

    data = load_study_data("tiny", study_url)
    knobs = knob_table(data.complete)
    assert set(knobs["branch"]) == {0, 1, 2, 3}
    largest = knobs[knobs["number"] == 0]  # trial 0 is the space's largest member
    assert list(largest["depth"]) == [8, 6, 4, 2] and set(largest["window"]) == {2} and set(largest["ratio"]) == {4}


def test_tables_hold_all_trials_and_the_front_with_units(report_dir, study_url):
    from search.records import open_study

    study = open_study("tiny", study_url)
    trials = pd.read_csv(report_dir / "tables" / "trials.csv")
    pareto = pd.read_csv(report_dir / "tables" / "pareto.csv")
    assert list(trials["number"]) == [t.number for t in study.trials]
    assert sorted(pareto["number"]) == sorted(t.number for t in pareto_trials(study))
    for column in ("latency_ms", "energy_mj", "params_m", "gflops", "accuracy", "feasible", "config_json"):
        assert column in trials.columns
    markdown = (report_dir / "tables" / "pareto.md").read_text()
    assert markdown.splitlines()[0].startswith("|") and "latency_ms" in markdown and "config_json" not in markdown
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert not (report_dir / "tables" / "trials.parquet").exists()
    else:
        assert len(pd.read_parquet(report_dir / "tables" / "trials.parquet")) == len(trials)


def test_html_report_is_self_contained(report_dir):
    page = (report_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(EXPECTED_FIGURES)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "Table: trials" in page and "Table: pareto" in page and "<table" in page
    assert "test-cpu" in page  # the device fingerprint
    assert "max_latency_ms" in page and "nsga2" in page  # the study settings


def test_report_is_byte_identical_when_regenerated(study_url, report_dir, tmp_path):
    assert run_cli(["report", "--study", "tiny", "--storage", study_url, "--out", str(tmp_path)]) == 0

    def digests(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}

    assert digests(tmp_path) == digests(report_dir)


def test_report_cli_errors_exit_2_and_create_nothing(study_url, tmp_path, capsys):
    assert run_cli(["report", "--study", "nope", "--storage", study_url, "--out", str(tmp_path / "r")]) == 2
    assert "tiny" in capsys.readouterr().err  # lists the studies that exist
    missing = tmp_path / "missing.db"
    assert run_cli(["report", "--study", "tiny", "--storage", str(missing), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "r").exists()


def test_settings_record_matches_contract(study_url):
    from search.records import open_study, study_settings

    settings = study_settings(open_study("tiny", study_url))
    assert [o["name"] for o in settings["objectives"]] == ["accuracy", "latency", "energy"]
    assert json.loads(json.dumps(settings["budgets"])) == {"max_latency_ms": LATENCY_BUDGET_MS}
