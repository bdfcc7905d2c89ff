"""What a trial measured (``Measurements``) and the one table of measured quantities (``QUANTITIES``).

Each quantity has one name (the measurements key, the trials-frame column and the metrics.json key), a
unit, a direction when it can be an objective, and a display label. Search objectives and budgets,
trial records, reports and export all read this table, so a name or unit is defined once. It lives in
``profiling`` because every package that talks about measurements can import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Quantity:
    key: str  # measurements key, trials-frame column, metrics.json key
    unit: str
    label: str  # axis and table label
    direction: str | None = None  # "minimize" | "maximize" for quantities that can be objectives


QUANTITIES: tuple[Quantity, ...] = (
    Quantity("params_m", "M", "params (M)", "minimize"),
    Quantity("gmacs", "GMACs", "compute (GMACs)"),
    Quantity("gflops", "GFLOPs", "flops (GFLOPs)", "minimize"),
    Quantity("latency_ms", "ms", "latency (ms)", "minimize"),
    Quantity("latency_source", "predictor | measured", "latency source"),
    Quantity("latency_contended", "true: other processes slowed the measurement (profiling.interference)", "latency contended"),
    Quantity("latency_interference_ratio", "x the reference kernel's quiet time", "interference ratio"),
    Quantity("latency_cpu_wait_pct", "% of timed thread-time waiting for a core", "CPU wait (%)"),
    Quantity("energy_mj", "mJ/image", "energy (mJ/image)", "minimize"),
    Quantity("accuracy", "score", "accuracy (estimator score)", "maximize"),
    Quantity("params_m_by_branch", "M", "params by branch (M)"),
    Quantity("gmacs_by_branch", "GMACs", "compute by branch (GMACs)"),
    Quantity("gmacs_by_component", "GMACs", "compute by component (GMACs)"),
)
QUANTITY = {q.key: q for q in QUANTITIES}


@dataclass
class Measurements:
    """One trial's measurements, each in its ``QUANTITIES`` unit; None (or empty) = not measured.

    ``plugins`` holds the values of plug-in objectives by their measurements key. The stored form
    (``to_dict``) is flat and omits what was not measured.
    """

    params_m: float | None = None
    gmacs: float | None = None
    gflops: float | None = None
    latency_ms: float | None = None
    latency_source: str | None = None  # "predictor" | "measured"
    latency_contended: bool | None = None
    latency_interference_ratio: float | None = None
    latency_cpu_wait_pct: float | None = None
    energy_mj: float | None = None
    accuracy: float | None = None
    params_m_by_branch: dict[str, float] = field(default_factory=dict)
    gmacs_by_branch: dict[str, float] = field(default_factory=dict)
    gmacs_by_component: dict[str, float] = field(default_factory=dict)
    plugins: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of_counts(cls, counts) -> "Measurements":
        """From ``profiling.AnalyticCounts`` (or anything with the same fields): params, compute, breakdowns."""
        return cls(
            params_m=counts.params / 1e6, gmacs=counts.macs / 1e9, gflops=counts.flops / 1e9,
            params_m_by_branch={k: v / 1e6 for k, v in counts.params_by_branch.items()},
            gmacs_by_branch={k: v / 1e9 for k, v in counts.macs_by_branch.items()},
            gmacs_by_component={k: v / 1e9 for k, v in counts.macs_by_component.items()},
        )

    def get(self, key: str) -> Any:
        """The value under measurements key ``key`` (a built-in quantity or a plug-in objective), else None."""
        if key in QUANTITY:
            return getattr(self, key)
        return self.plugins.get(key)

    def set(self, key: str, value: Any) -> None:
        if key in QUANTITY:
            setattr(self, key, value)
        else:
            self.plugins[key] = value

    def update(self, values: Mapping[str, Any]) -> None:
        """Set several keys (dict values are copied, so a cached source is never changed through ``self``)."""
        for key, value in values.items():
            self.set(key, dict(value) if isinstance(value, dict) else value)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "plugins"}
        data = {key: value for key, value in data.items() if value is not None and value != {}}
        return {**data, **self.plugins}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Measurements":
        known = {key: value for key, value in data.items() if key in QUANTITY}
        return cls(**known, plugins={key: value for key, value in data.items() if key not in QUANTITY})

    def units(self) -> dict[str, str]:
        """Unit of every measured built-in key (a plug-in objective's unit is on its ``search.objectives.Objective``)."""
        return {key: QUANTITY[key].unit for key in self.to_dict() if key in QUANTITY}
