"""The objectives and budgets a search can use, with their units and directions.

Every objective and budget reads one measured quantity (``profiling.QUANTITIES``: key, unit, direction,
label), so the objective values, the budget checks, the records and the reports agree on names and units.

The built-in objectives are measured by the search itself (counts, profiler, estimator). A user's package
adds one through the ``hrvit_nas.objectives`` entry-point group: an ``Objective`` with a ``measure``
function (config at the search's input size -> float), e.g. in its ``pyproject.toml``::

    [project.entry-points."hrvit_nas.objectives"]
    activations = "my_package.objectives:ACTIVATIONS"   # then: hrvit-nas search --objectives accuracy,activations
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from hrvit_nas import UserError
from profiling import QUANTITY

ENTRY_POINT_GROUP = "hrvit_nas.objectives"


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "maximize" | "minimize"
    unit: str
    key: str  # the measurements key holding the value
    measure: Callable | None = None  # plug-in objectives only: measure(config) -> float

    @property
    def worst(self) -> float:
        """Stands in for a value that was not measured because the trial already broke a budget."""
        return float("-inf") if self.direction == "maximize" else float("inf")

    @property
    def label(self) -> str:
        """Axis and table label (a plug-in objective's name with its unit)."""
        return QUANTITY[self.key].label if self.key in QUANTITY else f"{self.name} ({self.unit})"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "direction": self.direction, "unit": self.unit}


def _built_in(name: str, key: str) -> Objective:
    return Objective(name, QUANTITY[key].direction, QUANTITY[key].unit, key)


OBJECTIVES: dict[str, Objective] = {
    name: _built_in(name, key)
    for name, key in (("accuracy", "accuracy"), ("latency", "latency_ms"), ("energy", "energy_mj"), ("params", "params_m"), ("flops", "gflops"))
}
DEFAULT_OBJECTIVES = ("accuracy", "latency")


def plugin_objectives() -> dict[str, "Objective"]:
    """Objectives installed in the ``hrvit_nas.objectives`` entry-point group (loaded on use)."""
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in OBJECTIVES:
            continue
        try:
            loaded = ep.load()
        except (ImportError, AttributeError) as error:
            raise UserError(f"objective {ep.name!r} ({ep.value}) cannot be loaded ({error}); fix or uninstall its package") from None
        if not isinstance(loaded, Objective) or loaded.measure is None or loaded.direction not in ("maximize", "minimize"):
            raise UserError(f"objective {ep.name!r} ({ep.value}) is not a search.objectives.Objective with a measure function")
        found[ep.name] = loaded
    return found


def get_objective(name: str) -> Objective:
    """A built-in objective or an installed plug-in one; unknown names list what exists."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    plugins = plugin_objectives()
    if name not in plugins:
        raise UserError(f"unknown objective(s) {name}; choose from {', '.join([*OBJECTIVES, *plugins])}")
    return plugins[name]


@dataclass(frozen=True)
class Budget:
    name: str  # also the Optuna constraint key and the CLI option (--max-latency-ms)
    key: str  # the measurements key it bounds

    @property
    def unit(self) -> str:
        return QUANTITY[self.key].unit


# In the order they are checked: cheapest measurement first.
BUDGETS: dict[str, Budget] = {f"max_{key}": Budget(f"max_{key}", key) for key in ("params_m", "gflops", "latency_ms", "energy_mj")}


def parse_objectives(names: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"accuracy,latency"`` -> ("accuracy", "latency"); order is kept (it is the study's direction order)."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n).strip() for n in names]
    items = [n for n in items if n]
    if not items:
        raise UserError(f"--objectives is empty; choose one or more of {', '.join(OBJECTIVES)}")
    unknown = [n for n in items if n not in OBJECTIVES]
    if unknown:
        names = [*OBJECTIVES, *plugin_objectives()]
        missing = [n for n in unknown if n not in names]
        if missing:
            raise UserError(f"unknown objective(s) {', '.join(missing)}; choose from {', '.join(names)}")
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


def violations(measurements, budgets: dict[str, float]) -> dict[str, float]:
    """Budget name -> amount over the limit (in the budget's unit), for measured values only.
    ``measurements``: ``profiling.Measurements`` or its stored dict form."""
    over = {}
    for name, limit in budgets.items():
        value = measurements.get(BUDGETS[name].key)
        if value is not None and value > limit:
            over[name] = value - limit
    return over
