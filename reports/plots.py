"""Report figures: Pareto views, pairwise objectives, hypervolume history, knob sensitivity, branch costs.

Each builder returns a ``matplotlib.figure.Figure`` (or None when the study lacks the data) and never
touches pyplot state, so reports render headless. ``save_figure`` writes PNG and SVG that are
byte-identical across runs on the same storage: fixed SVG hash salt, no dates in the metadata, seeded
jitter, trials always in trial-number order.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hrvit_nas import atomic_path
from reports.metrics import BY_COLUMN, Metric
from reports.study_data import StudyData

STYLE = {
    "svg.hashsalt": "hrvit-nas",
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
# Drawing order: the study's front stays visible above the baseline diamonds that may share its points.
ZORDER = {"infeasible": 2, "feasible": 2, "baseline": 4, "pareto": 5, "contended": 6}
COLORS = {
    "infeasible": "#b5b5b5", "feasible": "#4c72b0", "pareto": "#d62728", "baseline": "#2ca02c", "budget": "#333333",
    "contended": "#ff7f0e",
}
FORMATS = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
MAX_BREAKDOWN_TRIALS = 12
BREAKDOWN_LEGEND_COLUMNS = 3
JITTER_SEED = 0


def report_style() -> contextlib.AbstractContextManager:
    """Matplotlib defaults plus ``STYLE``, whatever the user's matplotlibrc or global state says."""
    return matplotlib.style.context(["default", STYLE])


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` atomically; returns the paths."""
    paths = []
    with report_style():
        for fmt, metadata in FORMATS.items():
            path = stem.with_suffix(f".{fmt}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, metadata=metadata, dpi=120)
            paths.append(path)
    return paths


def render_figures(data: StudyData, out_dir: Path) -> dict[str, list[Path]]:
    """Build and save every figure the study has data for; returns {figure name: [png, svg]}."""
    figures: dict[str, list[Path]] = {}
    with report_style():
        for name, build in figure_builders(data):
            fig = build()
            if fig is not None:
                figures[name] = save_figure(fig, out_dir / name)
    return figures


def figure_builders(data: StudyData) -> list[tuple[str, Callable[[], Figure | None]]]:
    """(file stem, builder) for every figure of the report, in report order."""
    measured = data.measured()
    y = data.named(BY_COLUMN["accuracy"]) if BY_COLUMN["accuracy"] in measured else (data.objectives or measured)[0]
    builders: list[tuple[str, Callable[[], Figure | None]]] = [
        (f"pareto_{y.column}_vs_{x.column}", lambda x=x: pareto_plot(data, x, y)) for x in measured if x != y
    ]
    builders += [
        ("pairwise_objectives", lambda: pairwise_plot(data)),
        ("hypervolume_history", lambda: hypervolume_plot(data)),
    ]
    builders += [
        (f"sensitivity_{m.column}", lambda m=m: sensitivity_plot(data, m))
        for m in measured
        if m.column in ("latency_ms", "accuracy")
    ]
    builders.append(("branch_breakdown", lambda: branch_breakdown_plot(data)))
    return builders


# ------------------------------------------------------------------------------------ Pareto views
def pareto_plot(data: StudyData, x: Metric, y: Metric) -> Figure:
    """y against x: infeasible vs feasible trials, the study's front, the 2-D front line, budgets, baselines."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    _scatter_trials(ax, data, x, y)
    front = _front_2d(data.feasible, x, y)
    if len(front) > 1:
        ax.step(front[x.column], front[y.column], where="post", color=COLORS["pareto"], lw=1.2, label="front (this view)")
    _draw_budgets(ax, data, x, y)
    baselines = _draw_baselines(ax, data, x, y)
    ax.set_xlabel(x.label)
    ax.set_ylabel(y.label)
    ax.set_title(f"{data.name}: {y.objective} vs {x.objective}")
    ax.legend(loc="best", fontsize=7)
    _label_baselines(ax, baselines, x, y)
    return fig


def pairwise_plot(data: StudyData) -> Figure | None:
    """Every pair of objectives (lower triangle), for studies with three or more objectives."""
    objectives = [m for m in data.objectives if data.complete[m.column].notna().any()]
    if len(objectives) < 3:
        return None
    n = len(objectives) - 1
    fig = Figure(figsize=(3.0 * n, 2.8 * n), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, n, squeeze=False))
    for row, col in itertools.product(range(n), range(n)):
        ax = axes[row][col]
        if col > row:
            ax.set_axis_off()
            continue
        x, y = objectives[col], objectives[row + 1]
        _scatter_trials(ax, data, x, y, size=12)
        _draw_budgets(ax, data, x, y)
        ax.set_xlabel(x.label if row == n - 1 else "")
        ax.set_ylabel(y.label if col == 0 else "")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8)
    fig.suptitle(f"{data.name}: objectives pairwise")
    return fig


def _scatter_trials(ax: Axes, data: StudyData, x: Metric, y: Metric, size: float = 22) -> None:
    rows = data.complete.dropna(subset=[x.column, y.column])
    feasible = rows["feasible"].fillna(False).astype(bool)
    pareto = rows["pareto"].fillna(False).astype(bool)
    groups = (
        ("infeasible", rows[~feasible], "x"),
        ("feasible", rows[feasible & ~pareto], "o"),
        ("Pareto front", rows[pareto], "o"),
    )
    for (label, group, marker), color in zip(groups, ("infeasible", "feasible", "pareto")):
        if len(group):
            ax.scatter(group[x.column], group[y.column], s=size, marker=marker, color=COLORS[color],
                       label=f"{label} ({len(group)})", zorder=ZORDER[color])
    _ring_contended(ax, rows, x, y, size)


def _ring_contended(ax: Axes, rows: pd.DataFrame, x: Metric, y: Metric, size: float) -> None:
    """A hollow ring around each trial whose latency was measured while other processes loaded the CPU:
    its latency reads high, so a reader should not trust where it sits on the latency axis."""
    if "latency_ms" not in (x.column, y.column) or "latency_contended" not in rows:
        return
    contended = rows[rows["latency_contended"].eq(True)]
    if len(contended):
        ax.scatter(contended[x.column], contended[y.column], s=size * 4, marker="o", facecolors="none",
                   edgecolors=COLORS["contended"], linewidths=1.3, label=f"latency contended ({len(contended)})",
                   zorder=ZORDER["contended"])


def _front_2d(rows: pd.DataFrame, x: Metric, y: Metric) -> pd.DataFrame:
    """Non-dominated rows in the (x, y) plane, sorted by x."""
    rows = rows.dropna(subset=[x.column, y.column])
    sign_x, sign_y = (-1 if x.maximize else 1), (-1 if y.maximize else 1)
    ordered = rows.assign(_x=sign_x * rows[x.column], _y=sign_y * rows[y.column]).sort_values(["_x", "_y", "number"])
    keep, best = [], np.inf
    for index, value in zip(ordered.index, ordered["_y"]):
        if value < best:
            keep.append(index)
            best = value
    return ordered.loc[keep].sort_values(x.column)


def _draw_budgets(ax: Axes, data: StudyData, x: Metric, y: Metric) -> None:
    budgets = data.budgets
    if x.column in budgets:
        ax.axvline(budgets[x.column], ls="--", lw=1, color=COLORS["budget"], label=f"budget {budgets[x.column]:g} {x.unit}")
    if y.column in budgets:
        ax.axhline(budgets[y.column], ls="--", lw=1, color=COLORS["budget"], label=f"budget {budgets[y.column]:g} {y.unit}")


BASELINE_MARKER_AREA, BASELINE_EDGE_PT = 40, 1.5  # the diamonds: scatter's ``s`` (points^2) and edge width
LABEL_STEP_PT = 10.0  # how far a label moves down when its place is taken


def _draw_baselines(ax: Axes, data: StudyData, x: Metric, y: Metric) -> pd.DataFrame:
    """Diamonds on the baseline trials (labelled by ``_label_baselines`` once the layout is final); returns their rows."""
    rows = data.complete.dropna(subset=[x.column, y.column])
    rows = rows[rows["baseline"].notna()]
    if len(rows):
        ax.scatter(rows[x.column], rows[y.column], s=BASELINE_MARKER_AREA, marker="D", facecolors="none",
                   edgecolors=COLORS["baseline"], linewidths=BASELINE_EDGE_PT, label="baselines", zorder=ZORDER["baseline"])
    return rows


def _label_baselines(ax: Axes, rows: pd.DataFrame, x: Metric, y: Metric) -> None:
    """Name each baseline beside its diamond, on the side facing the plot's centre. A label is moved down
    until its rendered box covers neither another label nor any baseline's diamond (nearby baselines
    stack their labels). Boxes are measured after the figure's layout has settled."""
    if not len(rows):
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    fig = ax.get_figure()
    canvas = fig.canvas if hasattr(fig.canvas, "get_renderer") else FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # the constrained layout moves the axes: measure in its final place
    renderer = canvas.get_renderer()
    left, right = ax.get_xlim()
    middle = (left + right) / 2
    radius = (BASELINE_MARKER_AREA**0.5 / 2 + BASELINE_EDGE_PT) * fig.dpi / 72  # half the diamond, edge and a margin, in pixels
    taken = [Bbox.from_bounds(px - radius, py - radius, 2 * radius, 2 * radius)
             for px, py in ax.transData.transform(rows[[x.column, y.column]].to_numpy(dtype=float))]
    for _, row in rows.sort_values(y.column, ascending=False).iterrows():
        size = f", {row['params_m']:.3g} M params" if pd.notna(row.get("params_m")) else ""
        right_half = row[x.column] > middle  # the label grows toward the plot's centre, never off the axes
        dx, dy = (-6 if right_half else 6), -LABEL_STEP_PT
        label = ax.annotate(f"{baseline_label(row)}{size}", (row[x.column], row[y.column]), xytext=(dx, dy),
                            textcoords="offset points", ha="right" if right_half else "left", fontsize=8,
                            color=COLORS["baseline"], zorder=ZORDER["pareto"] + 1)
        label.set_in_layout(False)  # placed in the settled layout, which it must not move again
        for _ in range(4 * len(taken)):
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in taken):
                break
            dy -= LABEL_STEP_PT
            label.xyann = (dx, dy)
        taken.append(label.get_window_extent(renderer))


def baseline_label(row: pd.Series) -> str:
    """``HRViT-b3`` only when the trial is that preset (windows fitted to the input, as ``profile --preset``
    runs it); in a smaller space it is the nearest member, and naming it after the preset alone would
    claim b3's accuracy and size for a much smaller network."""
    from hrvit_space import ArchConfig, preset

    name = row["baseline"]
    config = ArchConfig.from_dict(json.loads(row["config_json"]))
    reference, _ = preset(name).fit_to_input(config.input_size)
    return f"HRViT-{name}" if config.replace(name=None) == reference.replace(name=None) else f"nearest to HRViT-{name}"


# ---------------------------------------------------------------------------------- hypervolume
def hypervolume_plot(data: StudyData) -> Figure | None:
    """Feasible hypervolume after each trial (``search.hypervolume``, the one implementation the search's
    progress bar and benchmark share).

    Reference point: the worst feasible value of each objective, pushed 10% of its range further.
    """
    from search import feasible_trials, hypervolume_history, reference_point

    study = data.study
    if len(study.directions) < 2:
        return None
    feasible = feasible_trials(study)
    if not feasible:
        return None
    reference = reference_point([t.values for t in feasible], study.directions)
    trial_numbers, hypervolumes = zip(*hypervolume_history(study, reference))
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(trial_numbers, hypervolumes, marker="o", ms=3, color=COLORS["feasible"])
    names = ", ".join(f"{m.objective} {'max' if m.maximize else 'min'}" for m in data.objectives)
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (feasible trials)")
    ax.set_title(f"{data.name}: hypervolume history ({names})")
    ref = ", ".join(f"{v:.4g}" for v in reference)
    ax.text(0.99, 0.02, f"reference point ({ref})", transform=ax.transAxes, ha="right", fontsize=7, color="#555555")
    return fig


# ---------------------------------------------------------------------------------- sensitivity
KNOB_FAMILIES = (("depth", "blocks per branch (all modules)"), ("window", "window size"), ("ratio", "MixCFN ratio"))


def knob_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per trial and branch: total depth, window size and MLP ratio, read from the stored config."""
    from hrvit_space import ArchConfig

    rows = []
    for number, config_json in zip(trials["number"], trials["config_json"]):
        config = ArchConfig.from_dict(json.loads(config_json))
        for b, (depth, window, ratio) in enumerate(zip(config.blocks_per_branch, config.window_sizes, config.mlp_ratios)):
            rows.append({"number": number, "branch": b, "depth": depth, "window": window, "ratio": ratio})
    return pd.DataFrame(rows, columns=["number", "branch", "depth", "window", "ratio"])


def sensitivity_plot(data: StudyData, metric: Metric) -> Figure | None:
    """``metric`` against each knob family, one colour per branch (dots: trials, line: median)."""
    trials = data.complete.dropna(subset=[metric.column, "config_json"])
    if trials.empty:
        return None
    knobs = knob_table(trials).merge(trials[["number", metric.column]], on="number")
    rng = np.random.default_rng(JITTER_SEED)
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, len(KNOB_FAMILIES), sharey=True)
    cmap = matplotlib.colormaps["viridis"]
    branches = sorted(knobs["branch"].unique())
    for ax, (family, label) in zip(axes, KNOB_FAMILIES):
        for b in branches:
            rows = knobs[knobs["branch"] == b]
            color = cmap(b / max(len(branches) - 1, 1))
            offset = (b - (len(branches) - 1) / 2) * 0.06
            jitter = rng.uniform(-0.02, 0.02, len(rows))
            ax.scatter(rows[family].astype(float) * (1 + offset + jitter), rows[metric.column], s=8, alpha=0.45, color=color)
            medians = rows.groupby(family)[metric.column].median()
            ax.plot(medians.index.astype(float), medians.values, marker="o", ms=4, color=color, label=f"branch {b}")
        ax.set_xlabel(label)
    axes[0].set_ylabel(metric.label)
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"{data.name}: {metric.objective} sensitivity per knob and branch ({len(trials)} trials)")
    return fig


# ---------------------------------------------------------------------------- per-branch costs
BREAKDOWNS = (
    ("params_m_by_branch", "params (M) by branch"),
    ("gmacs_by_branch", "GMACs by branch"),
    ("gmacs_by_component", "GMACs by component"),
)


def chosen_trials(data: StudyData) -> pd.DataFrame:
    """The trials worth a cost breakdown: the feasible front, then the baselines (at most 12)."""
    chosen = pd.concat([data.pareto, data.complete[data.complete["baseline"].notna()]])
    chosen = chosen.drop_duplicates("number")
    return chosen.head(MAX_BREAKDOWN_TRIALS)


def trial_breakdowns(data: StudyData, numbers: list[int]) -> dict[int, dict[str, dict[str, float]]]:
    """Breakdown dicts per trial: stored measurements first, else counted now from the stored config."""
    by_number = {t.number: t for t in data.study.get_trials(deepcopy=False)}
    result = {}
    for number in numbers:
        measurements = by_number[number].user_attrs.get("measurements") or {}
        stored = {key: measurements.get(key) for key, _ in BREAKDOWNS}
        if not stored["params_m_by_branch"] or not stored["gmacs_by_branch"]:
            stored = _count_breakdowns(by_number[number])
        result[number] = {key: value for key, value in stored.items() if value}
    return result


def _count_breakdowns(trial: Any) -> dict[str, dict[str, float]]:
    """Exact counts from the config alone (microseconds; no model is built or traced)."""
    from profiling import analytic_counts
    from search import trial_config

    counts = analytic_counts(trial_config(trial))
    return {
        "params_m_by_branch": {k: v / 1e6 for k, v in counts.params_by_branch.items()},
        "gmacs_by_branch": {k: v / 1e9 for k, v in counts.macs_by_branch.items()},
        "gmacs_by_component": {k: v / 1e9 for k, v in counts.macs_by_component.items()},
    }


def branch_breakdown_plot(data: StudyData) -> Figure | None:
    """Stacked bars: where the chosen trials spend parameters and compute (the paper's complexity split)."""
    chosen = chosen_trials(data)
    if chosen.empty:
        return None
    numbers = [int(n) for n in chosen["number"]]
    breakdowns = trial_breakdowns(data, numbers)
    panels = [(key, title) for key, title in BREAKDOWNS if any(key in b for b in breakdowns.values())]
    names = [_trial_label(row) for _, row in chosen.iterrows()]
    fig = Figure(figsize=(4.2 * len(panels), 1.4 + 0.35 * len(numbers)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (key, title) in zip(axes, panels):
        parts = sorted({part for b in breakdowns.values() for part in b.get(key, {})})
        left = np.zeros(len(numbers))
        colors = matplotlib.colormaps["tab10"]
        for i, part in enumerate(parts):
            widths = np.array([breakdowns[n].get(key, {}).get(part, 0.0) or 0.0 for n in numbers])
            ax.barh(names, widths, left=left, color=colors(i % 10), label=f"branch {part}" if part.isdigit() else part)
            left += widths
        ax.set_title(title)
        ax.invert_yaxis()
        # Few columns keep each legend narrower than its panel, so neighbouring legends never overlap.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(len(parts), BREAKDOWN_LEGEND_COLUMNS),
                  frameon=False)
    fig.suptitle(f"{data.name}: cost breakdown of the Pareto front and baselines")
    return fig


def _trial_label(row: pd.Series) -> str:
    label = f"trial {int(row['number'])}"
    return f"{label} ({baseline_label(row)})" if isinstance(row.get("baseline"), str) else label
