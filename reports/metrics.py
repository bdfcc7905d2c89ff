"""The measured quantities a report or selector talks about, derived from ``search.objectives``.

Column names follow the trial-record contract: the unit is part of the name (``latency_ms``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from search import BUDGETS, OBJECTIVES


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
        if self.objective == "accuracy":
            return f"accuracy: {self.measures}" if self.measures else "accuracy (estimator score)"
        return f"{self.objective} ({self.unit})"


METRICS: tuple[Metric, ...] = tuple(
    Metric(spec.key, name, spec.unit, spec.direction == "maximize",
           next((budget.name for budget in BUDGETS.values() if budget.key == spec.key), None))
    for name, spec in OBJECTIVES.items()
)
BY_COLUMN = {metric.column: metric for metric in METRICS}
BY_OBJECTIVE = {metric.objective: metric for metric in METRICS}

# Units of every measurement key a trial may carry (metrics.json writes them next to the values).
MEASUREMENT_UNITS = {
    **{metric.column: metric.unit for metric in METRICS},
    "accuracy": "estimator score (higher is better)",
    "latency_source": "predictor | measured",
    "latency_contended": "true: other processes slowed the measurement (profiling.interference)",
    "latency_interference_ratio": "x the reference kernel's quiet time",
    "latency_cpu_wait_pct": "% of timed thread-time waiting for a core",
    "gmacs": "GMACs",
    "params_m_by_branch": "M",
    "gmacs_by_branch": "GMACs",
    "gmacs_by_component": "GMACs",
}
