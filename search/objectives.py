"""The objectives and budgets a search can use, with their units and directions.

Every objective and budget reads one key of a trial's ``measurements`` dict (see ``search.records``), so
the objective values, the budget checks and the reports all agree on names and units.
"""

from __future__ import annotations

from dataclasses import dataclass

from hrvit_nas.errors import UserError


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "maximize" | "minimize"
    unit: str
    key: str  # the measurements key holding the value

    @property
    def worst(self) -> float:
        """Stands in for a value that was not measured because the trial already broke a budget."""
        return float("-inf") if self.direction == "maximize" else float("inf")

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "direction": self.direction, "unit": self.unit}


OBJECTIVES: dict[str, Objective] = {
    "accuracy": Objective("accuracy", "maximize", "score", "accuracy"),
    "latency": Objective("latency", "minimize", "ms", "latency_ms"),
    "energy": Objective("energy", "minimize", "mJ/image", "energy_mj"),
    "params": Objective("params", "minimize", "M", "params_m"),
    "flops": Objective("flops", "minimize", "GFLOPs", "gflops"),
}
DEFAULT_OBJECTIVES = ("accuracy", "latency")


@dataclass(frozen=True)
class Budget:
    name: str  # also the Optuna constraint key and the CLI option (--max-latency-ms)
    key: str  # the measurements key it bounds
    unit: str


# In the order they are checked: cheapest measurement first.
BUDGETS: dict[str, Budget] = {
    "max_params_m": Budget("max_params_m", "params_m", "M"),
    "max_gflops": Budget("max_gflops", "gflops", "GFLOPs"),
    "max_latency_ms": Budget("max_latency_ms", "latency_ms", "ms"),
    "max_energy_mj": Budget("max_energy_mj", "energy_mj", "mJ/image"),
}


def parse_objectives(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"accuracy,latency"`` -> ("accuracy", "latency"); order is kept (it is the study's direction order)."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    items = [n for n in items if n]
    if not items:
        raise UserError(f"--objectives is empty; choose one or more of {', '.join(OBJECTIVES)}")
    unknown = [n for n in items if n not in OBJECTIVES]
    if unknown:
        raise UserError(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVES)}")
    if len(set(items)) != len(items):
        raise UserError(f"--objectives {','.join(items)} repeats an objective; name each at most once")
    return tuple(items)


def check_budgets(budgets: dict[str, float | None]) -> dict[str, float]:
    """Drop unset budgets; refuse unknown names and non-positive limits (no architecture can meet them)."""
    checked: dict[str, float] = {}
    for name, limit in budgets.items():
        if name not in BUDGETS:
            raise UserError(f"unknown budget {name!r}; choose from {', '.join(BUDGETS)}")
        if limit is None:
            continue
        if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not limit > 0:
            option = "--" + name.replace("_", "-")
            raise UserError(f"impossible budget {option} {limit!r}: it must be a positive number of {BUDGETS[name].unit}")
        checked[name] = float(limit)
    return checked


def violations(measurements: dict, budgets: dict[str, float]) -> dict[str, float]:
    """Budget name -> amount over the limit (in the budget's unit), for measured values only."""
    over = {}
    for name, limit in budgets.items():
        value = measurements.get(BUDGETS[name].key)
        if value is not None and value > limit:
            over[name] = value - limit
    return over
