"""``--pick`` selectors: which trials of a study to export.

Grammar (case-insensitive)::

    SELECTOR := WHAT [ "under" LIMIT { "and" LIMIT } ]
    WHAT     := "pareto" | "knee" | "best" OBJECTIVE | "fastest" | "smallest"
    OBJECTIVE:= accuracy | latency | energy | params | flops
    LIMIT    := NUMBER UNIT          UNIT := ms | mJ | M (params, millions) | GFLOPs

Examples: ``"fastest under 30 ms"``, ``"best accuracy under 30 ms"``, ``"best accuracy under 5 mJ and
3 M"``, ``"knee"``, ``"pareto"``. Only complete, feasible trials (within the study's budgets) are
candidates; limits narrow them further. ``knee`` is the Pareto-front member closest to the ideal point
once every objective is min-max normalised over the front. Ties go to the lowest trial number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hrvit_nas import UserError
from reports.metrics import BY_COLUMN, BY_OBJECTIVE, Metric
from reports.study_data import StudyData

ALIASES = {"fastest": "latency", "smallest": "params"}
LIMIT_UNITS = {"ms": "latency_ms", "mj": "energy_mj", "m": "params_m", "gflops": "gflops"}
VALID_FORMS = (
    '"pareto" (every trial on the feasible Pareto front)',
    '"knee" (the front member closest to the normalised ideal point)',
    f'"best OBJECTIVE" with OBJECTIVE one of {", ".join(BY_OBJECTIVE)}',
    '"fastest" / "smallest" (best latency / best params)',
    (
        'any of these followed by "under NUMBER UNIT [and NUMBER UNIT]" with UNIT one of ms, mJ, M, GFLOPs '
        '(e.g. "best accuracy under 30 ms")'
    ),
)
_LIMIT = re.compile(r"(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]+)")


class SelectorError(UserError, ValueError):
    """A ``--pick`` selector outside the grammar, or one no trial satisfies."""


@dataclass(frozen=True)
class Selector:
    kind: str  # "pareto" | "knee" | "best"
    metric: Metric | None  # for "best"
    limits: tuple[tuple[Metric, float], ...] = ()
    text: str = ""


def parse_selector(text: str) -> Selector:
    words = " ".join(str(text).lower().split())
    what, _, limits_text = words.partition(" under ")
    limits = tuple(_parse_limit(part, text) for part in limits_text.split(" and ")) if limits_text else ()
    if what in ("pareto", "knee"):
        return Selector(what, None, limits, text)
    objective = ALIASES.get(what) or (what.removeprefix("best ") if what.startswith("best ") else None)
    if objective not in BY_OBJECTIVE:
        raise _invalid(text)
    return Selector("best", BY_OBJECTIVE[objective], limits, text)


def select(data: StudyData, selector: Selector) -> pd.DataFrame:
    """The chosen trial rows (one, or the front for ``pareto``), in trial-number order."""
    candidates = data.feasible
    if candidates.empty:
        raise SelectorError(f"study {data.name!r} has no feasible trial ({len(data.complete)} complete); {_relax_hint(data)}")
    for metric, limit in selector.limits:
        measured = candidates[metric.column].dropna() if metric.column in candidates else pd.Series(dtype=float)
        if measured.empty:
            raise SelectorError(f"selector {selector.text!r}: no feasible trial measured {metric.objective}; drop that limit")
        within = candidates[candidates[metric.column] <= limit]
        if within.empty:
            raise SelectorError(
                f"no feasible trial under {limit:g} {metric.unit} (the lowest feasible {metric.objective} is "
                f"{measured.min():.4g} {metric.unit}); relax the limit in {selector.text!r}"
            )
        candidates = within
    if selector.kind == "best":
        return _best(candidates, selector)
    front = candidates[candidates["pareto"].fillna(False).astype(bool)].sort_values("number")
    if front.empty:
        raise SelectorError(f"no Pareto-front trial satisfies {selector.text!r}; relax its limits or use 'best ...'")
    return front if selector.kind == "pareto" else knee(front, data.objectives)


def knee(front: pd.DataFrame, objectives: list[Metric]) -> pd.DataFrame:
    columns = [m for m in objectives if m.column in front and front[m.column].notna().all()]
    if len(columns) < 2 or len(front) == 1:
        return front.head(1)
    values = np.column_stack([(-1 if m.maximize else 1) * front[m.column].to_numpy(float) for m in columns])
    low, high = values.min(axis=0), values.max(axis=0)
    normalised = (values - low) / np.where(high > low, high - low, 1.0)
    distance = np.linalg.norm(normalised, axis=1)
    return front.iloc[[int(np.argmin(distance))]]  # argmin keeps the first (lowest number) on ties


def _best(candidates: pd.DataFrame, selector: Selector) -> pd.DataFrame:
    metric = selector.metric
    assert metric is not None
    rows = candidates.dropna(subset=[metric.column]) if metric.column in candidates else candidates.iloc[:0]
    if rows.empty:
        raise SelectorError(f"selector {selector.text!r}: no feasible trial measured {metric.objective}; pick by a measured objective")
    rows = rows.sort_values([metric.column, "number"], ascending=[not metric.maximize, True])
    return rows.head(1)


def _parse_limit(part: str, text: str) -> tuple[Metric, float]:
    match = _LIMIT.fullmatch(part.strip())
    if not match or match["unit"] not in LIMIT_UNITS:
        raise _invalid(text, f"cannot read the limit {part.strip()!r}")
    return BY_COLUMN[LIMIT_UNITS[match["unit"]]], float(match["value"])


def _invalid(text: str, problem: str | None = None) -> SelectorError:
    forms = "; ".join(VALID_FORMS)
    return SelectorError(f"invalid selector {text!r}{': ' + problem if problem else ''}; valid forms: {forms}")


def _relax_hint(data: StudyData) -> str:
    budgets = (data.settings.get("budgets") or {})
    if not budgets:
        return "check the failed trials (`hrvit-nas report`) and search again"
    flags = ", ".join(f"--{key.replace('_', '-')} {value:g}" for key, value in budgets.items())
    return f"relax {flags} and search again"
