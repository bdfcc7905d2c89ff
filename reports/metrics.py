"""The measured quantities a report or selector talks about, derived from ``search.objectives`` (itself
from ``profiling.QUANTITIES``, the one table of names, units, directions and labels).

Column names follow the trial-record contract: the unit is part of the name (``latency_ms``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from profiling import QUANTITIES, QUANTITY
from hrvit_nas import UserError
from search import BUDGETS, OBJECTIVES, get_objective


@dataclass(frozen=True)
class Metric:
    column: str  # trials-frame column and measurement key
    objective: str  # objective name in the study settings
    unit: str
    maximize: bool
    budget: str | None  # key in settings["budgets"]
    measures: str | None = field(default=None, compare=False)  # what a study's accuracy estimator returns

    @property
    def label(self) -> str:
        """Axis and table label: a proxy is never called plain "accuracy" without saying which one."""
        if self.objective == "accuracy" and self.measures:
            return f"accuracy: {self.measures}"
        return QUANTITY[self.column].label if self.column in QUANTITY else f"{self.objective} ({self.unit})"


METRICS: tuple[Metric, ...] = tuple(
    Metric(spec.key, name, spec.unit, spec.direction == "maximize",
           next((budget.name for budget in BUDGETS.values() if budget.key == spec.key), None))
    for name, spec in OBJECTIVES.items()
)
BY_COLUMN = {metric.column: metric for metric in METRICS}
BY_OBJECTIVE = {metric.objective: metric for metric in METRICS}


def objective_metric(name: str) -> Metric | None:
    """The metric of objective ``name``: built in, or a plug-in of the ``hrvit_nas.objectives`` entry-point group
    (None when that package is no longer installed)."""
    if name in BY_OBJECTIVE:
        return BY_OBJECTIVE[name]
    try:
        spec = get_objective(name)
    except UserError:
        return None
    return Metric(spec.key, name, spec.unit, spec.direction == "maximize", None)

# Units of every measurement key a trial may carry (metrics.json writes them next to the values).
MEASUREMENT_UNITS = {quantity.key: quantity.unit for quantity in QUANTITIES}
