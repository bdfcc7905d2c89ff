"""``SearchSettings``: everything that defines a study's objectives, stored as its ``settings`` attribute.

A resumed study must match the stored settings on ``RESUME_KEYS`` (the rest, e.g. sampler or seed, may change).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Sequence

from hrvit_nas import UserError
from hrvit_space import SearchSpace
from profiling import DEFAULT_MAX_SECONDS, check_max_seconds
from search.estimators import DEFAULT_ESTIMATOR, estimator_class
from search.objectives import DEFAULT_OBJECTIVES, check_budgets, get_objective, parse_objectives
from search.samplers import DEFAULT_SAMPLER, SAMPLERS

SETTINGS_SCHEMA_VERSION = 1
RESUME_KEYS = (
    "objectives", "budgets", "space", "input_size", "batch", "runtime", "dtype", "estimator", "estimator_options", "latency_predictor",
)


@dataclass
class SearchSettings:
    """Everything that defines a study's objectives; stored as the study's ``settings`` user attribute."""

    space: SearchSpace = field(default_factory=SearchSpace.default)
    objectives: Sequence[str] = DEFAULT_OBJECTIVES
    budgets: dict[str, float] = field(default_factory=dict)
    input_size: tuple[int, int] | None = None  # None: the space's input size
    batch: int = 1
    device: str = "auto"
    runtime: str = "eager"  # what latency (and its budget) is measured on: profiling.runtimes.RUNTIMES
    dtype: str = "fp32"
    estimator: str | None = None  # None: zero-cost when accuracy is an objective
    estimator_options: dict[str, Any] = field(default_factory=dict)
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0
    latency_predictor: str | None = None
    baselines: bool = False
    max_seconds: float | None = DEFAULT_MAX_SECONDS  # bound of one latency measurement (may change on resume)

    def __post_init__(self) -> None:
        self.objectives = parse_objectives(self.objectives)
        self.budgets = check_budgets(dict(self.budgets))
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        check_max_seconds(self.max_seconds, "--max-seconds")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise UserError(f"batch {self.batch!r}: it must be a positive integer")
        self.input_size = tuple(self.input_size or self.space.base.input_size)
        if self.input_size != self.space.base.input_size:
            self.space = self.space.with_input_size(self.input_size)
        if "accuracy" in self.objectives:
            self.estimator = self.estimator or DEFAULT_ESTIMATOR
            estimator_class(self.estimator)  # unknown names fail here, before anything runs
            if self.estimator in ("params", "flops") and self.estimator in self.objectives:
                raise UserError(
                    f"--estimator {self.estimator} scores accuracy by {self.estimator}, which is already an objective; "
                    "drop one of them (e.g. --objectives accuracy,latency)"
                )
        elif self.estimator is not None or self.estimator_options:
            raise UserError("--estimator only applies with the accuracy objective; add accuracy to --objectives or drop --estimator")
        needs_latency = "latency" in self.objectives or "max_latency_ms" in self.budgets
        if self.latency_predictor is not None and not needs_latency:
            raise UserError("--latency-predictor is given but neither the latency objective nor --max-latency-ms uses it")

    @property
    def objective_specs(self):
        return [get_objective(name) for name in self.objectives]

    def metric_names(self) -> list[str]:
        """Objective names with units for the study (optuna-dashboard, plots): the estimator says what
        "accuracy" is (e.g. "NASWOT score"), so a proxy is never shown as plain accuracy."""
        names = []
        for spec in self.objective_specs:
            if spec.name == "accuracy":
                cls = estimator_class(self.estimator)
                names.append(f"{cls.metric_name} ({cls.unit})" if cls.unit else cls.metric_name)
            else:
                names.append(f"{spec.name} ({spec.unit})")
        return names

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SETTINGS_SCHEMA_VERSION,
            "objectives": [spec.to_dict() for spec in self.objective_specs],
            "budgets": dict(self.budgets),
            "space": self.space.to_dict(),
            "input_size": list(self.input_size),
            "batch": self.batch,
            "device": self.device,
            "runtime": self.runtime,
            "dtype": self.dtype,
            "estimator": self.estimator,
            "estimator_options": dict(self.estimator_options),
            "sampler": self.sampler,
            "seed": self.seed,
            "latency_predictor": self.latency_predictor,
            "baselines": self.baselines,
            "max_seconds": self.max_seconds,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchSettings":
        return cls(
            space=SearchSpace.from_dict(data["space"]),
            objectives=[o["name"] for o in data["objectives"]],
            budgets=data.get("budgets", {}),
            input_size=tuple(data["input_size"]),
            batch=data.get("batch", 1),
            device=data.get("device", "auto"),
            runtime=data.get("runtime", "eager"),  # studies from before runtimes existed measured eager fp32
            dtype=data.get("dtype", "fp32"),
            estimator=data.get("estimator"),
            estimator_options=data.get("estimator_options", {}),
            sampler=data.get("sampler", DEFAULT_SAMPLER),
            seed=data.get("seed", 0),
            latency_predictor=data.get("latency_predictor"),
            baselines=data.get("baselines", False),
            max_seconds=data.get("max_seconds", DEFAULT_MAX_SECONDS),
        )


