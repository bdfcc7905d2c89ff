"""Reports from a small real study: every figure type (headless) and none misleading, tables, the HTML page,
determinism, CLI."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from conftest import LATENCY_BUDGET_MS, make_study, run_cli, two_branch_space
from hrvit_space import preset
from search.records import pareto_trials

BASELINES = {0: "b1", 3: "b3"}  # trial number -> the preset it stands in for (its nearest member of the space)


@pytest.fixture(scope="module")
def study_url(new_study_url) -> str:
    return new_study_url(baselines=BASELINES)


@pytest.fixture(scope="module")
def report_dir(study_url, tmp_path_factory) -> Path:
    from reports.report import write_report
    from reports.study_data import load_study_data

    out = tmp_path_factory.mktemp("report")
    write_report(load_study_data("tiny", study_url), out)
    return out


EXPECTED_FIGURES = {
    "pareto_accuracy_vs_latency_ms", "pareto_accuracy_vs_energy_mj", "pareto_accuracy_vs_params_m",
    "pareto_accuracy_vs_gflops", "pairwise_objectives", "hypervolume_history", "sensitivity_latency_ms",
    "sensitivity_accuracy", "branch_breakdown",
}


def test_every_figure_type_is_rendered_as_png_and_svg(report_dir, study_url):
    from reports.plots import figure_builders
    from reports.study_data import load_study_data

    figures = report_dir / "figures"
    assert {name for name, _ in figure_builders(load_study_data("tiny", study_url))} == EXPECTED_FIGURES
    assert {p.stem for p in figures.glob("*.png")} == EXPECTED_FIGURES
    assert {p.stem for p in figures.glob("*.svg")} == EXPECTED_FIGURES
    for stem in EXPECTED_FIGURES:
        assert (figures / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(figures / f"{stem}.png")
        assert (image[..., :3] < 0.8).mean() > 0.01, f"{stem} looks blank"
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
    params = data.complete.set_index("number").loc[0, "params_m"]
    assert f"nearest to HRViT-b1, {params:.3g} M params" in [text.get_text() for text in ax.texts]


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
    assert "<td>budgets.max_latency_ms</td>" in page and "<td>sampler</td>" in page  # the study settings


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


# ------------------------------------------------------------------------- figures that do not mislead
def test_baseline_label_names_the_nearest_member_and_its_real_size(data):
    from reports.metrics import BY_COLUMN
    from reports.plots import pareto_plot

    texts = [t.get_text() for t in pareto_plot(data, BY_COLUMN["latency_ms"], BY_COLUMN["accuracy"]).axes[0].texts]
    params = data.complete.set_index("number")["params_m"]
    for number, name in BASELINES.items():
        assert f"nearest to HRViT-{name}, {params[number]:.3g} M params" in texts
    assert not any(re.fullmatch(r"HRViT-b\d", text) for text in texts)


def test_baseline_labels_of_nearby_baselines_cover_no_label_and_no_diamond(data):
    """Three baselines a hair apart (as the demo's b1 and b3 land): every label stays readable."""
    import dataclasses

    from reports.metrics import BY_COLUMN
    from reports.plots import pareto_plot

    trials = data.trials.copy()
    first = trials[trials["baseline"].notna()].index[0]
    crowd = trials[(trials["state"] == "COMPLETE") & trials["baseline"].isna()].index[:2]
    x, y = trials.loc[first, "latency_ms"], trials.loc[first, "accuracy"]
    x_range, y_range = (trials[c].max() - trials[c].min() for c in ("latency_ms", "accuracy"))
    inward = 1.0 if x < trials["latency_ms"].mean() else -1.0  # where the first label grows: onto its text
    for k, index in enumerate(crowd, start=1):
        trials.loc[index, ["latency_ms", "accuracy", "baseline"]] = [x + inward * 0.02 * k * x_range, y - 0.01 * k * y_range, f"b{k + 1}"]
    fig = pareto_plot(dataclasses.replace(data, trials=trials), BY_COLUMN["latency_ms"], BY_COLUMN["accuracy"])
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ax = fig.axes[0]
    labels = [t.get_window_extent(renderer) for t in ax.texts if "HRViT-" in t.get_text()]
    diamonds = next(c for c in ax.collections if c.get_label() == "baselines")
    radius = 4 * fig.dpi / 72  # the diamond's half-width, 40 points^2
    marks = [(px, py) for px, py in ax.transData.transform(diamonds.get_offsets())]
    assert len(labels) == len(marks) >= 3
    for i, box in enumerate(labels):
        assert not any(box.overlaps(other) for other in labels[i + 1:])
        assert not any(box.x0 < px + radius and px - radius < box.x1 and box.y0 < py + radius and py - radius < box.y1
                       for px, py in marks)


def test_baseline_label_is_the_preset_name_only_for_the_preset_itself():
    from reports.plots import baseline_label

    exact = pd.Series({"baseline": "b1", "config_json": preset("b1").replace(input_size=(256, 256)).to_json()})
    assert baseline_label(exact) == "HRViT-b1"
    fitted = pd.Series({"baseline": "b1", "config_json": preset("b1").fit_to_input((96, 96))[0].to_json()})
    assert baseline_label(fitted) == "HRViT-b1"  # as `profile --preset b1 --input 96x96` runs it
    near = pd.Series({"baseline": "b1", "config_json": preset("b1").replace(depths=((1,), (1, 1), (1, 1, 2), (1, 1, 2), (1, 1, 2, 2), (1, 1, 2, 2))).to_json()})
    assert baseline_label(near) == "nearest to HRViT-b1"


def test_pareto_markers_are_drawn_above_baseline_diamonds(data):
    from reports.metrics import BY_COLUMN
    from reports.plots import pareto_plot

    for x in ("latency_ms", "params_m"):
        ax = pareto_plot(data, BY_COLUMN[x], BY_COLUMN["accuracy"]).axes[0]
        zorder = {c.get_label().split(" (")[0]: c.get_zorder() for c in ax.collections}
        assert zorder["Pareto front"] > zorder["baselines"] > zorder["feasible"]


def test_branch_breakdown_legends_do_not_overlap(data):
    from reports.plots import branch_breakdown_plot, report_style

    with report_style():
        fig = branch_breakdown_plot(data)
        FigureCanvasAgg(fig).draw()
        renderer = fig.canvas.get_renderer()
        legends = [ax.get_legend().get_window_extent(renderer) for ax in fig.axes]
        entries = [len(ax.get_legend().get_texts()) for ax in fig.axes]
    assert len(legends) == 3 and max(entries) >= 7  # the profiler's components: attention, mixcfn, patch_embed, ...
    for a, b in itertools.combinations(legends, 2):
        assert not a.overlaps(b), (a, b)
    page = fig.bbox
    for box in legends:
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0


def test_html_shows_settings_as_a_table_and_offers_the_json(data, report_dir):
    page = (report_dir / "report.html").read_text()
    assert "<pre>" not in page
    section = page[page.index("<h2>Study settings</h2>"):]
    assert re.search(r"<td>budgets\.max_latency_ms</td>\s*<td>6\.0</td>", section)
    assert re.search(rf"<td>sampler</td>\s*<td>{data.settings['sampler']}</td>", section)
    assert re.search(r"<td>objectives\[0\]\.name</td>\s*<td>accuracy</td>", section)
    link = re.search(r'<a download="settings.json" href="data:application/json;base64,([A-Za-z0-9+/=]+)">', section)
    assert json.loads(base64.b64decode(link.group(1))) == data.settings
    fingerprint = page[page.index("<h2>Device fingerprint</h2>"):page.index("<h2>Study settings</h2>")]
    assert re.search(r"<td>cpu</td>\s*<td>test-cpu</td>", fingerprint)


def test_axes_name_the_proxy_the_study_measured_accuracy_with(tmp_path):
    """A proxy is never plotted as plain "accuracy": the axis says what the study's estimator returns."""
    from reports.plots import figure_builders
    from reports.study_data import load_study_data

    url = f"sqlite:///{tmp_path / 'study.db'}"
    make_study(url).set_metric_names(["NASWOT score (log-det)", "latency (ms)", "energy (mJ)"])
    data = load_study_data("tiny", url)
    (stem, build), *_ = [(stem, build) for stem, build in figure_builders(data) if stem.startswith("pareto_accuracy")]
    figure = build()
    assert figure.axes[0].get_ylabel() == "accuracy: NASWOT score (log-det)"
    assert data.objectives[0].label == "accuracy: NASWOT score (log-det)"
