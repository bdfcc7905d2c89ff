"""The search itself: settings, samplers, the per-trial evaluation (cheap checks first) and a worker loop.

A trial measures in order of cost and stops at the first broken budget: params (no forward pass),
FLOPs (one traced pass), latency (predictor, else measured), energy (measured), accuracy (estimator).
A stopped trial is COMPLETE and infeasible: it keeps what was measured, its unmeasured objectives hold
the worst value (inf, or -inf for accuracy), and its unmeasured constraints hold 0 (Optuna needs
the same constraint keys on every trial). Budgets are Optuna 5 per-trial constraints
(``Trial.set_constraint``), so samplers use them and ``study.best_trials`` is feasible only.

A config the study has already evaluated is not evaluated again: the proposal is PRUNED (user
attribute ``duplicate_of``) and the sampler proposes another, so ``--trials N`` means N distinct
evaluated architectures. Only after many duplicates in a row (the sampler has converged, or the
space is nearly exhausted) is a duplicate COMPLETED, by copying the earlier trial's results, so the
search still ends. On a 512-member space this lifts NSGA-II from 0.92 to ~0.97 of the exhaustive
front's hypervolume at 100 trials (benchmarks/search_quality.py).
"""

from __future__ import annotations

import datetime
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState

from hrvit_nas.errors import UserError
from hrvit_space import ArchConfig, SearchSpace, preset
from search.estimators import DEFAULT_ESTIMATOR, ESTIMATORS, make_estimator
from search.objectives import BUDGETS, DEFAULT_OBJECTIVES, OBJECTIVES, check_budgets, parse_objectives, violations

SETTINGS_SCHEMA_VERSION = 1
SAMPLERS = ("nsga2", "tpe", "gp", "random")
NSGA2_POPULATION = 20  # small generations: 100 trials see five (benchmarks/search_quality.py)
BASELINE_PRESETS = ("b1", "b2", "b3")
MAX_FAILURES_IN_A_ROW = 10
MAX_DUPLICATES_IN_A_ROW = 50  # then a duplicate is completed from its earlier trial, so the search ends
# Settings that must match when a study is resumed (the rest, e.g. sampler or seed, may change).
RESUME_KEYS = ("objectives", "budgets", "space", "input_size", "batch", "estimator", "estimator_options", "latency_predictor")


class TrialFailed(Exception):
    """A trial's evaluation raised; Optuna records it FAILED and the study continues."""


@dataclass
class SearchSettings:
    """Everything that defines a study's objectives; stored as the study's ``settings`` user attribute."""

    space: SearchSpace = field(default_factory=SearchSpace.default)
    objectives: Sequence[str] = DEFAULT_OBJECTIVES
    budgets: dict[str, float] = field(default_factory=dict)
    input_size: tuple[int, int] | None = None  # None: the space's input size
    batch: int = 1
    device: str = "auto"
    estimator: str | None = None  # None: zero-cost when accuracy is an objective
    estimator_options: dict[str, Any] = field(default_factory=dict)
    sampler: str = "nsga2"
    seed: int = 0
    latency_predictor: str | None = None
    baselines: bool = False

    def __post_init__(self) -> None:
        self.objectives = parse_objectives(self.objectives)
        self.budgets = check_budgets(dict(self.budgets))
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise UserError(f"batch {self.batch!r}: it must be a positive integer")
        self.input_size = tuple(self.input_size or self.space.base.input_size)
        if self.input_size != self.space.base.input_size:
            self.space = self.space.with_input_size(self.input_size)
        if "accuracy" in self.objectives:
            self.estimator = self.estimator or DEFAULT_ESTIMATOR
            if self.estimator not in ESTIMATORS:
                raise UserError(f"unknown estimator {self.estimator!r}; choose from {', '.join(ESTIMATORS)}")
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
        return [OBJECTIVES[name] for name in self.objectives]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SETTINGS_SCHEMA_VERSION,
            "objectives": [OBJECTIVES[name].to_dict() for name in self.objectives],
            "budgets": dict(self.budgets),
            "space": self.space.to_dict(),
            "input_size": list(self.input_size),
            "batch": self.batch,
            "device": self.device,
            "estimator": self.estimator,
            "estimator_options": dict(self.estimator_options),
            "sampler": self.sampler,
            "seed": self.seed,
            "latency_predictor": self.latency_predictor,
            "baselines": self.baselines,
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
            estimator=data.get("estimator"),
            estimator_options=data.get("estimator_options", {}),
            sampler=data.get("sampler", "nsga2"),
            seed=data.get("seed", 0),
            latency_predictor=data.get("latency_predictor"),
            baselines=data.get("baselines", False),
        )


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)
        if name == "tpe":
            # 20 random start-up trials (Optuna's default: 10) reach 0.994 vs 0.980 of the exhaustive
            # hypervolume at 100 trials, median of 30 seeds (benchmarks/search_quality.py)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=20)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


# ------------------------------------------------------------------------------------ one trial
def suggest_config(trial: optuna.Trial, space: SearchSpace) -> ArchConfig:
    """The sampler proposes one value per knob; the space turns them into a config.

    Evenly spaced integer choices (depths 1..3, ratios 2/4) are ordinal, so samplers get them as
    stepped integers and can exploit their order; other choice sets are categorical.
    """
    return space.decode({knob.name: _suggest_knob(trial, knob.name, knob.choices) for knob in space.knobs()})


def _suggest_knob(trial: optuna.Trial, name: str, choices: tuple) -> Any:
    steps = {b - a for a, b in zip(choices, choices[1:])}
    if len(choices) > 1 and all(isinstance(c, int) for c in choices) and len(steps) == 1:
        return trial.suggest_int(name, choices[0], choices[-1], step=steps.pop())
    return trial.suggest_categorical(name, choices)


class DuplicateGuard:
    """Finds an earlier COMPLETE trial of the same config; prunes the proposal, up to a limit.

    One per worker: it counts the duplicates this worker has proposed in a row.
    """

    def __init__(self, limit: int = MAX_DUPLICATES_IN_A_ROW) -> None:
        self.limit = limit
        self.in_a_row = 0

    def check(self, trial: optuna.Trial, config_hash: str) -> optuna.trial.FrozenTrial | None:
        """None for a new config; raises ``TrialPruned`` for a duplicate, or returns the earlier trial
        to copy once ``limit`` duplicates came in a row."""
        trial.set_user_attr("config_hash", config_hash)
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        earlier = next((t for t in done if t.user_attrs.get("config_hash") == config_hash), None)
        if earlier is None:
            self.in_a_row = 0
            return None
        trial.set_user_attr("duplicate_of", earlier.number)
        for name, value in earlier.constraints.items():  # every trial carries the same constraint keys
            trial.set_constraint(name, value)
        if self.in_a_row < self.limit:
            self.in_a_row += 1
            raise optuna.TrialPruned(f"config already evaluated in trial {earlier.number}")
        self.in_a_row = 0
        return earlier


class TrialEvaluator:
    """The Optuna objective: config from the trial's parameters, then measurements in order of cost."""

    def __init__(self, settings: SearchSettings) -> None:
        self.settings = settings
        self.duplicates = DuplicateGuard()
        self.estimator = None
        if settings.estimator is not None:
            self.estimator = make_estimator(
                settings.estimator,
                **{"input_size": settings.input_size, "device": settings.device, "seed": settings.seed, **settings.estimator_options},
            )
        self.predictor = None
        if settings.latency_predictor is not None:
            from profiling import LatencyPredictor

            self.predictor = LatencyPredictor.load(settings.latency_predictor, device=settings.device)

    def __call__(self, trial: optuna.Trial) -> list[float]:
        config = suggest_config(trial, self.settings.space)
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("estimator", self.settings.estimator)
        earlier = self.duplicates.check(trial, config.content_hash())
        if earlier is not None:
            return self._copy(earlier, trial)
        measurements: dict[str, Any] = {}
        try:
            self.measure(config, measurements, trial)
        except UserError:
            raise
        except Exception as error:  # a crash or out-of-memory in one config must not stop the study
            trial.set_user_attr("measurements", measurements)
            trial.set_user_attr("failure_reason", f"{type(error).__name__}: {error}")
            raise TrialFailed(f"trial {trial.number}: {type(error).__name__}: {error}") from error
        over = violations(measurements, self.settings.budgets)
        for name, limit in self.settings.budgets.items():
            value = measurements.get(BUDGETS[name].key)
            trial.set_constraint(name, 0.0 if value is None else value - limit)
        trial.set_user_attr("measurements", measurements)
        trial.set_user_attr("violations", over)
        trial.set_user_attr("feasible", not over)
        return [
            measurements[spec.key] if measurements.get(spec.key) is not None else spec.worst
            for spec in self.settings.objective_specs
        ]

    @staticmethod
    def _copy(earlier: optuna.trial.FrozenTrial, trial: optuna.Trial) -> list[float]:
        """Complete ``trial`` with the results of ``earlier``, which evaluated the same config (its
        constraints are already copied by ``DuplicateGuard.check``)."""
        for key in ("measurements", "violations", "feasible", "fingerprint"):
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        return list(earlier.values)

    def _over(self, measurements: dict[str, Any]) -> bool:
        return bool(violations(measurements, self.settings.budgets))

    def measure(self, config: ArchConfig, m: dict[str, Any], trial: optuna.Trial | None = None, *, accuracy: bool = True) -> None:
        """Fill ``m`` cheapest first; return early once a budget is broken.

        The timed profile also counts params/FLOPs, so a separate counting pass only runs when a FLOPs
        budget must be checked before timing, or when nothing is timed.
        """
        from profiling import profile

        s = self.settings
        needs_energy = "energy" in s.objectives or "max_energy_mj" in s.budgets
        needs_latency = "latency" in s.objectives or "max_latency_ms" in s.budgets
        predicted = needs_latency and self.predictor is not None
        timed = needs_energy or (needs_latency and not predicted)
        common = {"device": s.device, "input_size": s.input_size, "batch": s.batch}
        if "max_params_m" in s.budgets:
            m["params_m"] = count_params_m(config)
            if self._over(m):
                return
        if "max_gflops" in s.budgets or not timed:
            self._take_counts(profile(config, measure_latency=False, energy=False, **common), m, trial)
            if self._over(m):
                return
        if predicted:
            m["latency_ms"] = float(self.predictor.predict(config))
            m["latency_source"] = "predictor"
            if self._over(m):
                return
        if timed:
            result = profile(config, measure_latency=True, energy=needs_energy, **common)
            self._take_counts(result, m, trial)
            if "latency_ms" not in m:
                m["latency_ms"] = result.latency.median
                m["latency_source"] = "measured"
            if needs_energy:
                if result.energy is None or not result.energy.available:
                    reason = result.energy.unavailable_reason if result.energy else "not measured"
                    raise UserError(f"energy cannot be measured on this device ({reason}); drop the energy objective/budget or use a GPU with NVML")
                m["energy_mj"] = result.energy.mj_per_image
            if self._over(m):
                return
        if self.estimator is not None and accuracy:
            m["accuracy"] = float(self.estimator.estimate(config, trial))

    @staticmethod
    def _take_counts(result, m: dict[str, Any], trial: optuna.Trial | None) -> None:
        _raise_on_error(result)
        m["params_m"] = result.params / 1e6
        m["gmacs"] = result.macs / 1e9
        m["gflops"] = result.flops / 1e9
        m["params_m_by_branch"] = {k: v / 1e6 for k, v in result.params_by_branch.items()}
        m["gmacs_by_branch"] = {k: v / 1e9 for k, v in result.macs_by_branch.items()}
        m["gmacs_by_component"] = {k: v / 1e9 for k, v in result.macs_by_component.items()}
        if trial is not None and result.fingerprint:
            trial.set_user_attr("fingerprint", result.fingerprint)


def _raise_on_error(result) -> None:
    if result.error:
        raise RuntimeError(result.error)


def count_params_m(config: ArchConfig) -> float:
    """Parameters in millions without a forward pass (the cheapest budget check)."""
    from hrvit_space.model import build_model
    from profiling import count_params

    total, _, _ = count_params(build_model(config))
    return total / 1e6


# ------------------------------------------------------------------------------- study set-up
def load_or_create_study(settings: SearchSettings, study_name: str, storage, *, check: Callable[[], None] | None = None) -> optuna.Study:
    """Resume ``study_name`` if it exists (its settings must match), else run ``check`` and create it.

    ``check`` runs before anything is written, so a refused search leaves the storage untouched.
    """
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    wanted = settings.to_dict()
    if study_name in existing:
        stored = existing[study_name].user_attrs.get("settings")
        if stored is None:
            raise UserError(f"study {study_name!r} exists but was not created by hrvit-nas search; choose another --study name")
        differing = [key for key in RESUME_KEYS if _comparable(stored.get(key)) != _comparable(wanted.get(key))]
        if differing:
            details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {wanted.get(k)!r}" for k in differing if k != "space")
            if "space" in differing:
                details = "space differs" + (f"; {details}" if details else "")
            raise UserError(
                f"study {study_name!r} was created with other settings ({details}); "
                "repeat the original options to resume it, or choose a new --study name"
            )
        return optuna.load_study(study_name=study_name, storage=storage)
    if check is not None:
        check()
    directions = [OBJECTIVES[name].direction for name in settings.objectives]
    study = optuna.create_study(study_name=study_name, storage=storage, directions=directions, load_if_exists=True)
    if "settings" not in study.user_attrs:
        study.set_user_attr("settings", wanted)
    if settings.baselines:
        enqueue_baselines(study, settings.space)
    return study


def _comparable(value: Any) -> Any:
    """JSON round trip, so tuples and lists compare equal."""
    import json

    return json.loads(json.dumps(value))


def enqueue_baselines(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Queue the reference presets (their nearest members of the space) as the first trials."""
    queued = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)}
    seen_params: list[dict] = []
    names = []
    for name in BASELINE_PRESETS:
        if name in queued:
            continue
        params = space.encode(space.nearest(preset(name)))
        if params in seen_params:
            continue
        seen_params.append(params)
        study.enqueue_trial(params, user_attrs={"baseline": name})
        names.append(name)
    return names


def preflight(evaluator: TrialEvaluator) -> None:
    """Before anything is stored: refuse budgets that even the smallest architecture breaks, and
    energy objectives/budgets on a device that cannot measure energy."""
    settings = evaluator.settings
    if not settings.budgets and "energy" not in settings.objectives:
        return
    m: dict[str, Any] = {}
    evaluator.measure(settings.space.smallest(), m, accuracy=False)
    over = violations(m, settings.budgets)
    if over:
        name = next(iter(over))
        value = m[BUDGETS[name].key]
        raise UserError(
            f"impossible budget --{name.replace('_', '-')} {settings.budgets[name]:g}: the smallest architecture in the "
            f"space already needs {value:.4g} {BUDGETS[name].unit}; raise the budget or search a smaller space"
        )


# ------------------------------------------------------------------------------------ worker loop
def trial_counts(study: optuna.Study) -> dict[TrialState, int]:
    counts = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


def has_heartbeat(storage) -> bool:
    return isinstance(storage, optuna.storages.RDBStorage) and bool(storage.get_heartbeat_interval())


def run_worker(
    settings: SearchSettings,
    study_name: str,
    storage,
    n_trials: int,
    *,
    seed: int | None = None,
    evaluator: TrialEvaluator | None = None,
    callbacks: Sequence[Callable] = (),
    poll_s: float = 0.5,
) -> optuna.Study:
    """Run trials until the study holds ``n_trials`` COMPLETE trials (those of earlier runs count).

    Trials RUNNING elsewhere are waited for when the storage has a heartbeat (a dead worker's trial
    turns stale, is failed and re-queued); without one they are not waited for.
    """
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=make_sampler(settings.sampler, seed))
    evaluator = evaluator or TrialEvaluator(settings)
    heartbeat = has_heartbeat(storage)
    last: list[optuna.trial.FrozenTrial] = []
    failures_in_a_row = 0
    while True:
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        counts = trial_counts(study)
        complete, running = counts[TrialState.COMPLETE], counts[TrialState.RUNNING]
        if complete >= n_trials:
            return study
        if complete + running >= n_trials and counts[TrialState.WAITING] == 0:
            if not heartbeat:
                return study
            time.sleep(poll_s)
            continue
        study.optimize(evaluator, n_trials=1, catch=(TrialFailed,), callbacks=[*callbacks, lambda _s, t: last.append(t)])
        if last and last[-1].state != TrialState.PRUNED:  # a pruned duplicate neither fails nor succeeds
            failures_in_a_row = failures_in_a_row + 1 if last[-1].state == TrialState.FAIL else 0
        if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise UserError(
                f"{failures_in_a_row} trials in a row failed (last: {last[-1].user_attrs.get('failure_reason', 'unknown')}); "
                "fix the cause (see failure_reason in the study) and re-run the same command to resume"
            )
