"""Calibrated latency predictor (block table or analytic counts), so a search can screen thousands of candidates.

Within a search space only the blocks change: each branch ``b`` runs ``n_b`` identical HRViT blocks whose
cost depends on (window_b, ratio_b), while the stem, fusions, patch embeddings, norms and head are fixed.
So latency ~ beta + sum_b alpha_b * n_b * block_ms[b, window_b, ratio_b] (model ``branch-scales``). The block table comes from
timing each block variant in isolation (on inputs captured from a real forward pass); the per-branch
scales alpha_b and the fixed cost beta are fitted (non-negative, ridge-shrunk towards one common scale,
the shrinkage chosen by leave-one-out error) on whole models measured on the same device and runtime:
separately timed blocks sum to only 0.86-0.90x of the whole model, and not by the same factor on every
branch (the high-resolution branch is memory-bound, the low-resolution ones are not). The second model,
``counts``, needs no block table: latency ~ beta + sum_b c_b * n_b + g * GMACs (per-block overhead per
branch plus compute, from ``analytic_counts``). On the 40 held-out configs of two idle-machine builds at 224
neither beat the other beyond the measurement noise (85%/tau 0.81 and 85%/0.61 for the block table, 80%/0.76
and 100%/0.67 for the counts, leave-one-out), so each build picks the one with the lower leave-one-out
error on its own calibration models and records both candidates' held-out scores.

Calibration and held-out configs are stratified over the space's predicted latency range (the extremes
included), not drawn at random: random draws cluster in the middle, where ranking them is a test of the
timer's noise rather than of the predictor. Every timing group also runs one fixed anchor model: each
run's latency is the median of its per-round ratios to the anchor (the two were timed seconds apart, so
drift within a group cancels) times the anchor's median over all groups (so drift between groups does
not skew the table or the fit). The error report (share within +-10%, Kendall tau) is printed beside the
noise floor of the measurements and what a perfect predictor would score against measurements that
noisy: on an idle 2-core VM at 224 the floor was 5.5% per measurement, where a perfect predictor lands
only ~93% within +-10% with tau 0.74-0.81 on those builds' held-out configs (builds scored 85%, tau
0.81 and 0.61); tau >= 0.9 there needs a floor near 2%. The floor, not the model, decides the goals.
One predictor answers for one (device, runtime, dtype, input size, batch).
"""

from __future__ import annotations

import itertools
import json
import random
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hrvit_nas import UserError, atomic_write_text
from hrvit_space import ArchConfig, SearchSpace
from profiling.analytic import analytic_counts
from profiling.device import resolve_device
from profiling.fingerprint import device_fingerprint
from profiling.latency import TimingStrategy, check_threads, default_threads, measure_runs, median_relative_error
from profiling.progress import PhaseProgress
from profiling.runtimes import check_runtime, prepare, runtime_version

PREDICTOR_SCHEMA_VERSION = 2
_BLOCK_NAME = re.compile(r"stages\.\d+\.branches\.(\d+)\.blocks\.\d+$")
_GROUP = 6  # whole models timed interleaved at once (bounded memory)
_POOL = 400  # configs sampled to find the space's latency range before stratifying
_RIDGE = (0.0, 0.01, 0.1, 1.0, 10.0)  # shrinkage candidates, relative to the mean feature energy
_CEILING_DRAWS = 2000  # simulated re-measurements for the perfect predictor's score
BRANCH_SCALES, COUNTS = "branch-scales", "counts"
MIN_CALIBRATION = 3


class PredictorMismatch(UserError):
    """The predictor cannot answer for this config or device; rebuild it (``hrvit-nas profile build-predictor``)."""


@dataclass(frozen=True)
class PredictorAccuracy:
    """How well predictions matched measurements on held-out configs, beside the measurements' own noise.

    ``noise_floor_pct``: median estimated standard error of one measured median (% of it);
    ``anchor_cv_pct``: spread of the fixed anchor model's median across timing groups (drift and noise);
    ``contended``: measurements flagged as taken while other processes loaded the CPU;
    ``ceiling_within10_pct`` / ``ceiling_tau``: what a perfect predictor would score against these held-out
    measurements if each carried the noise floor's error (simulated): the goals are judged against them.
    """

    within10_pct: float
    kendall_tau: float
    mean_abs_error_pct: float
    n: int
    rows: tuple[tuple[str, float, float], ...] = ()  # (config hash, predicted ms, measured ms)
    noise_floor_pct: float | None = None
    anchor_cv_pct: float | None = None
    contended: int = 0
    ceiling_within10_pct: float | None = None
    ceiling_tau: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "within10_pct": self.within10_pct, "kendall_tau": self.kendall_tau,
            "mean_abs_error_pct": self.mean_abs_error_pct, "n": self.n, "rows": [list(r) for r in self.rows],
            "noise_floor_pct": self.noise_floor_pct, "anchor_cv_pct": self.anchor_cv_pct, "contended": self.contended,
            "ceiling_within10_pct": self.ceiling_within10_pct, "ceiling_tau": self.ceiling_tau,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictorAccuracy:
        return cls(**{**data, "rows": tuple(tuple(r) for r in data.get("rows", ()))})

    def describe(self) -> str:
        noise = f"; noise floor {self.noise_floor_pct:.1f}% per measurement, anchor drift {self.anchor_cv_pct:.1f}%" if (
            self.noise_floor_pct is not None and self.anchor_cv_pct is not None) else ""
        if self.ceiling_within10_pct is not None and self.ceiling_tau is not None:
            noise += (f" (a perfect predictor would score ~{self.ceiling_within10_pct:.0f}% and tau ~{self.ceiling_tau:.2f} "
                      "against measurements this noisy)")
        flagged = f"; {self.contended} measurement(s) CONTENDED: rebuild on a quiet machine" if self.contended else ""
        return (f"{self.within10_pct:.0f}% of {self.n} held-out configs within +-10%, Kendall tau {self.kendall_tau:.3f}, "
                f"mean |error| {self.mean_abs_error_pct:.1f}%{noise}{flagged}")


def noise_ceiling(measured: Sequence[float], noise_pct: float, seed: int = 0) -> tuple[float, float]:
    """(% within +-10%, Kendall tau) of a perfect predictor against ``measured`` re-measured with ``noise_pct``
    relative error (normal), averaged over simulated re-measurements."""
    from scipy.stats import kendalltau

    truth = np.asarray(measured, dtype=float)
    draws = truth * (1 + noise_pct / 100 * np.random.default_rng(seed).standard_normal((_CEILING_DRAWS, len(truth))))
    within = float(np.mean(np.abs(truth / draws - 1) <= 0.10))
    taus = [kendalltau(truth, d).statistic for d in draws[: _CEILING_DRAWS // 10]] if len(truth) > 1 else [float("nan")]
    return 100.0 * within, float(np.mean(taus))


def accuracy_of(predicted: Sequence[float], measured: Sequence[float], names: Sequence[str] = (), **noise: Any) -> PredictorAccuracy:
    from scipy.stats import kendalltau

    errors = [abs(p - m) / m for p, m in zip(predicted, measured)]
    tau = float(kendalltau(predicted, measured).statistic) if len(measured) > 1 else float("nan")
    if noise.get("noise_floor_pct") is not None:
        noise["ceiling_within10_pct"], noise["ceiling_tau"] = noise_ceiling(measured, noise["noise_floor_pct"])
    return PredictorAccuracy(
        within10_pct=100.0 * sum(e <= 0.10 for e in errors) / len(errors),
        kendall_tau=tau,
        mean_abs_error_pct=100.0 * sum(errors) / len(errors),
        n=len(errors),
        rows=tuple(zip(names or [""] * len(errors), predicted, measured)),
        **noise,
    )


def _structure(config: ArchConfig, input_size: tuple[int, int]) -> dict[str, Any]:
    """Everything a search space keeps fixed; a predictor answers only for configs that share it."""
    data = config.replace(input_size=input_size).to_dict()
    for key in ("depths", "window_sizes", "mlp_ratios", "name", "drop_path_rate"):
        data.pop(key)
    data["module_branches"] = list(config.module_branches)
    return data


def _block_key(branch: int, window: int, ratio: float) -> str:
    return f"{branch}/{window}/{ratio:g}"


def fit_branch_scales(features: np.ndarray, measured: np.ndarray) -> tuple[list[float], float]:
    """Non-negative ``measured ~ features @ alpha + beta``, ridge-shrunk towards one common scale.

    The shrinkage is picked by leave-one-out relative error, so few calibration models give the common
    scale (a two-parameter fit) and many give per-branch scales.
    """
    from scipy.optimize import nnls

    n, branches = features.shape
    total = features.sum(axis=1)
    common = nnls(np.column_stack([total, np.ones(n)]), measured)[0]
    prior = np.array([common[0]] * branches + [common[1]])
    design = np.column_stack([features, np.ones(n)])
    energy = float(np.mean(np.sum(design**2, axis=0)))

    def solve(rows: np.ndarray, ridge: float) -> np.ndarray:
        weight = np.sqrt(ridge * energy) * np.r_[np.ones(branches), 0.0]  # the fixed cost is not shrunk
        a = np.vstack([design[rows], np.diag(weight)])
        b = np.concatenate([measured[rows], weight * prior])
        return nnls(a, b)[0]

    def loo_error(ridge: float) -> float:
        if n <= branches + 1:
            return 0.0 if ridge == max(_RIDGE) else np.inf  # too few models to judge: shrink the most
        errors = []
        for left_out in range(n):
            keep = np.arange(n) != left_out
            errors.append(abs(design[left_out] @ solve(keep, ridge) - measured[left_out]) / measured[left_out])
        return float(np.mean(errors))

    best = min(_RIDGE, key=loo_error)
    solution = solve(np.arange(n), best)
    return [float(a) for a in solution[:-1]], float(solution[-1])


def fit_counts(features: np.ndarray, measured: np.ndarray) -> tuple[list[float], float]:
    """Non-negative ``measured ~ features @ c + beta`` (block counts per branch and GMACs: all add time)."""
    from scipy.optimize import nnls

    solution = nnls(np.column_stack([features, np.ones(len(measured))]), measured)[0]
    return [float(c) for c in solution[:-1]], float(solution[-1])


_FITS = {BRANCH_SCALES: fit_branch_scales, COUNTS: fit_counts}


def loo_relative_error(features: np.ndarray, measured: np.ndarray, fit) -> float | None:
    """Mean relative error of ``fit`` predicting each calibration model from the others; None when too few
    models are left to fit every coefficient of ``fit_counts`` (the branch scales shrink, so they always fit)."""
    n = len(measured)
    if fit is fit_counts and n <= features.shape[1] + 2:
        return None
    errors = []
    for left_out in range(n):
        keep = np.arange(n) != left_out
        coefficients, intercept = fit(features[keep], measured[keep])
        errors.append(abs(features[left_out] @ np.array(coefficients) + intercept - measured[left_out]) / measured[left_out])
    return float(np.mean(errors))


def _stratified(space: SearchSpace, raw_ms, count: int, rng: random.Random) -> list[ArchConfig]:
    """``count`` distinct configs spread evenly over the predicted latency range, extremes included."""
    pool = {c.content_hash(): c for c in [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(_POOL))]}
    ranked = sorted(pool.values(), key=raw_ms)
    if len(ranked) <= count:
        return ranked
    low, high = raw_ms(ranked[0]), raw_ms(ranked[-1])
    chosen = [ranked[0], ranked[-1]]
    remaining = ranked[1:-1]
    for target in np.linspace(low, high, count)[1:-1]:  # the member nearest each evenly spaced latency
        nearest = min(remaining, key=lambda c: abs(raw_ms(c) - target))
        remaining.remove(nearest)
        chosen.append(nearest)
    return sorted(chosen, key=raw_ms)


@dataclass
class LatencyPredictor:
    """``predict(config) -> ms`` for configs sharing the structure it was built on, on the same device,
    runtime, dtype, input size and batch."""

    device: str
    fingerprint: dict[str, Any]
    structure: dict[str, Any]
    batch: int
    dtype: str
    block_ms: dict[str, float]
    runtime: str = "eager"
    runtime_version: str | None = None
    alphas: list[float] = field(default_factory=list)  # the coefficients of ``model``'s features
    beta: float = 0.0
    accuracy: PredictorAccuracy | None = None
    calibration: list[tuple[str, float]] = field(default_factory=list)
    model: str = BRANCH_SCALES
    candidates: dict[str, dict[str, float | None]] = field(default_factory=dict)  # model -> LOO and held-out scores

    # ------------------------------------------------------------------------------------- predict
    def _check_structure(self, config: ArchConfig) -> None:
        if _structure(config, tuple(self.structure["input_size"])) != self.structure:
            raise PredictorMismatch(
                f"config {config.name or config.content_hash()} differs from the predictor's fixed architecture "
                "(channels, head, dim_head, branches per module or input size); rebuild the predictor for its space"
            )

    def branch_ms(self, config: ArchConfig) -> list[float]:
        """Uncalibrated sum of the block table over each branch's blocks of ``config``."""
        self._check_structure(config)
        sums = []
        for b, count in enumerate(config.blocks_per_branch):
            key = _block_key(b, config.window_sizes[b], config.mlp_ratios[b])
            if count and key not in self.block_ms:
                raise PredictorMismatch(
                    f"predictor has no timing for branch {b} with window {config.window_sizes[b]} and ratio "
                    f"{config.mlp_ratios[b]}; rebuild it over a space that includes these choices"
                )
            sums.append(count * self.block_ms.get(key, 0.0))
        return sums

    def raw_ms(self, config: ArchConfig) -> float:
        return sum(self.branch_ms(config))

    def features(self, config: ArchConfig, model: str | None = None) -> list[float]:
        """What ``model`` (default this predictor's) multiplies by its coefficients."""
        if (model or self.model) == BRANCH_SCALES:
            return self.branch_ms(config)
        self._check_structure(config)
        counts = analytic_counts(config, tuple(self.structure["input_size"]), batch=self.batch)
        return [*map(float, config.blocks_per_branch), counts.macs / 1e9]

    def predict(self, config: ArchConfig) -> float:
        """Predicted latency in ms per batch (same batch, dtype, runtime, input size and device as the build)."""
        features = self.features(config)
        alphas = self.alphas or [1.0] * len(features)
        return float(sum(a * f for a, f in zip(alphas, features)) + self.beta)

    def check(self, *, runtime: str = "eager", dtype: str = "fp32", batch: int = 1, input_size: Sequence[int] | None = None) -> None:
        """Refuse to answer for another runtime, dtype, batch or input size than the one it was built for."""
        wanted = {"runtime": runtime, "dtype": dtype, "batch": batch}
        built = {"runtime": self.runtime, "dtype": self.dtype, "batch": self.batch}
        if input_size is not None:
            wanted["input"], built["input"] = list(input_size), list(self.structure["input_size"])
        differing = [f"{key} {built[key]} (asked: {wanted[key]})" for key in wanted if wanted[key] != built[key]]
        if differing:
            raise PredictorMismatch(
                f"latency predictor was built for {', '.join(differing)}; one predictor answers for one (device, runtime, "
                "dtype, input, batch): build one for these with `hrvit-nas profile build-predictor`"
            )

    # ---------------------------------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        space_or_configs: SearchSpace | Sequence[ArchConfig],
        device: str | torch.device = "auto",
        *,
        input_size: tuple[int, int] | None = None,
        batch: int = 1,
        dtype: str = "fp32",
        runtime: str = "eager",
        calibration: int = 12,
        holdout: int = 20,
        seed: int = 0,
        strategy: TimingStrategy | str | None = None,
        warmup_s: float = 0.5,
        trials: int = 10,
        threads: int | None = None,
        max_seconds: float | None = None,
        progress: bool = False,
    ) -> LatencyPredictor:
        """Time block variants, fit the calibration on ``calibration`` whole models, report on ``holdout`` others.

        Both sets are stratified over the space's latency range. With a list of configs, they are the
        calibration set (at least 3) and no held-out report is made. ``max_seconds`` bounds each timing group.
        ``strategy``: how each group is timed (``profiling.latency.STRATEGIES``), with ``warmup_s`` and
        ``trials`` (exactly that many rounds, so every run has one trial per round beside the anchor's).
        """
        resolved = resolve_device(device)
        check_runtime(runtime, resolved, dtype)
        threads = default_threads() if threads is None else check_threads(threads)
        counts = [("trials", trials, 2, "timed rounds per measurement")]
        if isinstance(space_or_configs, SearchSpace):
            counts += [("calibration", calibration, MIN_CALIBRATION, "whole models measured"), ("holdout", holdout, 0, "whole models measured")]
        for name, value, least, meaning in counts:
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise UserError(f"{name} {value!r} is invalid; give an integer >= {least} ({meaning})")
        if isinstance(space_or_configs, SearchSpace):
            space = space_or_configs
            base = space.base
            windows, ratios = space.window_choices, space.ratio_choices
        else:
            space, calibrate = None, list(space_or_configs)
            if len(calibrate) < MIN_CALIBRATION:
                raise UserError(f"a latency predictor needs at least {MIN_CALIBRATION} calibration configs, got {len(calibrate)}")
            base = calibrate[0]
            windows = [sorted({c.window_sizes[b] for c in calibrate}) for b in range(base.num_branches)]
            ratios = [sorted({c.mlp_ratios[b] for c in calibrate}) for b in range(base.num_branches)]
        size = tuple(input_size or base.input_size)
        timing = {"strategy": strategy, "warmup_s": warmup_s, "trials": trials, "max_trials": trials, "threads": threads,
                  "max_seconds": max_seconds}
        block_groups = max(len(w) * len(r) for w, r in zip(windows, ratios))
        planned = calibration + holdout if space is not None else len(calibrate)
        with PhaseProgress("timing block variants", block_groups + -(-planned // _GROUP), enabled=progress) as bar:
            timer = _AnchoredTimer(base.replace(input_size=size), resolved, batch, dtype, runtime, timing, bar)
            block_ms = _time_blocks(base, windows, ratios, size, timer)
            predictor = cls(
                device=str(resolved), fingerprint=device_fingerprint(resolved, threads=threads), structure=_structure(base, size),
                batch=batch, dtype=dtype, block_ms=block_ms, runtime=runtime, runtime_version=runtime_version(runtime),
            )
            held_out: list[ArchConfig] = []
            if space is not None:
                chosen = _stratified(space, predictor.raw_ms, calibration + holdout, random.Random(seed))
                picks = set(np.linspace(0, len(chosen) - 1, min(calibration, len(chosen))).round().astype(int).tolist())
                calibrate = [c for i, c in enumerate(chosen) if i in picks]
                held_out = [c for i, c in enumerate(chosen) if i not in picks]
            # Calibration and held-out models are shuffled into the same interleaved groups: drift hits both alike.
            models = calibrate + held_out
            order = random.Random(seed).sample(range(len(models)), len(models))
            bar.describe("timing whole models")
            timed = timer.time_models([models[i] for i in order], size)
        by_position = timer.normalised(timed)
        measured = {index: by_position[str(position)] for position, index in enumerate(order)}
        predictor.block_ms = timer.normalised(block_ms)
        calibration_ms = [measured[i] for i in range(len(calibrate))]
        predictor.calibration = [(c.content_hash(), ms) for c, ms in zip(calibrate, calibration_ms)]
        held_out_ms = [measured[len(calibrate) + i] for i in range(len(held_out))]
        predictor.choose_model(calibrate, calibration_ms, held_out, held_out_ms)
        if held_out:
            predictor.accuracy = predictor.evaluate(held_out, held_out_ms, **timer.noise())
        return predictor

    def choose_model(
        self, calibrate: Sequence[ArchConfig], calibration_ms: Sequence[float], held_out: Sequence[ArchConfig] = (),
        held_out_ms: Sequence[float] = (),
    ) -> None:
        """Fit every model on the calibration models and keep the one with the lower leave-one-out error;
        record each one's scores (the held-out ones are reported, never used to choose)."""
        measured = np.array(calibration_ms)
        fitted: dict[str, tuple[list[float], float]] = {}
        for model, fit in _FITS.items():
            features = np.array([self.features(c, model) for c in calibrate])
            loo = loo_relative_error(features, measured, fit)
            if loo is None:
                continue
            self.model, (self.alphas, self.beta) = model, fit(features, measured)
            fitted[model] = self.alphas, self.beta
            self.candidates[model] = {"loo_error_pct": 100 * loo}
            if held_out:
                scored = self.evaluate(held_out, held_out_ms)
                self.candidates[model].update(within10_pct=scored.within10_pct, kendall_tau=scored.kendall_tau)
        self.model = min(fitted, key=lambda m: self.candidates[m]["loo_error_pct"])
        self.alphas, self.beta = fitted[self.model]

    def evaluate(self, configs: Sequence[ArchConfig], measured_ms: Sequence[float], **noise: Any) -> PredictorAccuracy:
        return accuracy_of([self.predict(c) for c in configs], list(measured_ms), [c.content_hash() for c in configs], **noise)

    # ------------------------------------------------------------------------------------ save/load
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PREDICTOR_SCHEMA_VERSION, "device": self.device, "fingerprint": self.fingerprint,
            "structure": self.structure, "batch": self.batch, "dtype": self.dtype, "runtime": self.runtime,
            "runtime_version": self.runtime_version, "block_ms": self.block_ms, "alphas": self.alphas, "beta": self.beta,
            "calibration": [list(c) for c in self.calibration], "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "model": self.model, "candidates": self.candidates,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None, *, check_device: bool = True) -> LatencyPredictor:
        """Load and refuse a predictor measured on another device or runtime version (fingerprint mismatch)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"latency predictor {path} not found; build one with `hrvit-nas profile build-predictor --out {path}`") from None
        except (OSError, ValueError) as error:
            raise UserError(f"latency predictor {path} is unreadable ({error}); rebuild it") from None
        if not isinstance(data, dict) or data.get("schema_version") != PREDICTOR_SCHEMA_VERSION:
            raise UserError(f"latency predictor {path} is not a predictor of schema {PREDICTOR_SCHEMA_VERSION}; rebuild it")
        accuracy = data.pop("accuracy")
        data.pop("schema_version")
        try:
            predictor = cls(**{**data, "calibration": [tuple(c) for c in data["calibration"]]})
            predictor.accuracy = PredictorAccuracy.from_dict(accuracy) if accuracy else None
        except (TypeError, KeyError) as error:
            raise UserError(f"latency predictor {path} is malformed ({error}); rebuild it") from None
        if check_device:
            here = device_fingerprint(resolve_device(device or predictor.device), threads=predictor.fingerprint.get("threads"), volatile=False)
            if here["fingerprint_id"] != predictor.fingerprint["fingerprint_id"]:
                raise PredictorMismatch(
                    f"latency predictor {path} was measured on another device or software stack "
                    f"({predictor.fingerprint.get('name')}, torch {predictor.fingerprint.get('torch')}, "
                    f"id {predictor.fingerprint['fingerprint_id']}; here: {here.get('name')}, torch {here.get('torch')}, "
                    f"id {here['fingerprint_id']}); rebuild it here with `hrvit-nas profile build-predictor`"
                )
            if predictor.runtime_version != runtime_version(predictor.runtime):
                raise PredictorMismatch(
                    f"latency predictor {path} was measured with {predictor.runtime_version}, here it is "
                    f"{runtime_version(predictor.runtime)}; rebuild it here with `hrvit-nas profile build-predictor`"
                )
        return predictor


class _AnchoredTimer:
    """Times runs in interleaved groups that always include one fixed anchor model.

    On a shared machine the load drifts between groups; dividing each group by its anchor's median (and
    multiplying by the anchor's overall median) puts block and whole-model timings on one scale.
    """

    def __init__(
        self, anchor: ArchConfig, device: torch.device, batch: int, dtype: str, runtime: str, timing: dict[str, Any], bar: PhaseProgress
    ) -> None:
        self.device, self.batch, self.dtype, self.runtime, self.timing, self.bar = device, batch, dtype, runtime, timing, bar
        self._anchor = self.prepare(_build(anchor), torch.randn(batch, anchor.in_chans, *anchor.input_size))
        self._scales: dict[str, float] = {}  # measurement name -> anchor median of its group
        self._errors: list[float] = []  # estimated relative standard error of each measured median
        self.contended = 0

    def prepare(self, module: torch.nn.Module, inputs: torch.Tensor):
        return prepare(self.runtime, module, inputs, self.device, dtype=self.dtype, threads=self.timing["threads"]).run

    def time(self, runs: dict[str, Any]) -> dict[str, float]:
        """Each run's median ratio to the anchor over the rounds both ran, in ms at this group's anchor median."""
        stats = measure_runs({**runs, "__anchor__": self._anchor}, self.device, **self.timing)
        anchor = stats.pop("__anchor__")
        self._scales.update({name: anchor.median for name in stats})
        ratios = {name: paired_ratios(s.samples, anchor.samples) for name, s in stats.items()}
        self._errors.extend(median_relative_error(r) for r in ratios.values())
        self.contended += sum(s.contended for s in stats.values())
        self.bar.advance()
        return {name: statistics.median(r) * anchor.median for name, r in ratios.items()}

    def time_models(self, configs: Sequence[ArchConfig], input_size: tuple[int, int]) -> dict[str, float]:
        """Median ms per config (keyed by position), in groups of ``_GROUP``."""
        result: dict[str, float] = {}
        for start in range(0, len(configs), _GROUP):
            inputs = torch.randn(self.batch, configs[0].in_chans, *input_size)
            result.update(self.time({
                str(start + i): self.prepare(_build(c.replace(input_size=input_size)), inputs)
                for i, c in enumerate(configs[start : start + _GROUP])
            }))
        return result

    def normalised(self, measured: dict[str, float]) -> dict[str, float]:
        reference = statistics.median(self._scales.values())
        return {name: ms * reference / self._scales[name] for name, ms in measured.items()}

    def noise(self) -> dict[str, Any]:
        anchors = list(dict.fromkeys(self._scales.values()))  # one anchor median per group
        finite = [e for e in self._errors if np.isfinite(e)]
        return {
            "noise_floor_pct": 100.0 * statistics.median(finite) if finite else None,
            "anchor_cv_pct": 100.0 * statistics.stdev(anchors) / statistics.fmean(anchors) if len(anchors) > 1 else None,
            "contended": self.contended,
        }


def paired_ratios(samples: Sequence[float], anchor_samples: Sequence[float]) -> list[float]:
    """Per-round ratios of a run's trials to the anchor's (round ``i`` is index ``i`` of both, rounds that only one
    of them ran are dropped): a load change between rounds scales both trials of a round and cancels."""
    return [m / a for m, a in zip(samples, anchor_samples)]


def _build(config: ArchConfig) -> torch.nn.Module:
    from hrvit_space import build_model

    return build_model(config).eval()


def _time_blocks(
    base: ArchConfig, windows: Sequence[Sequence[int]], ratios: Sequence[Sequence[float]], input_size: tuple[int, int],
    timer: _AnchoredTimer,
) -> dict[str, float]:
    """Median ms of one block per (branch, window, ratio), timed on inputs captured from a probe model."""
    variants = [list(itertools.product(w, r)) for w, r in zip(windows, ratios)]
    table: dict[str, float] = {}
    for probe in range(max(len(v) for v in variants)):
        chosen = [v[probe % len(v)] for v in variants]
        config = base.replace(  # a valid base has at least one block per branch to time
            input_size=input_size, window_sizes=tuple(w for w, _ in chosen), mlp_ratios=tuple(r for _, r in chosen)
        )
        model = _build(config)
        blocks = _first_block_per_branch(model)
        captured: dict[int, torch.Tensor] = {}
        hooks = [block.register_forward_pre_hook(lambda mod, args, b=b, store=captured: store.setdefault(b, args[0].detach().clone()))
                 for b, block in blocks.items()]
        with torch.no_grad():
            model(torch.randn(timer.batch, config.in_chans, *input_size))
        for hook in hooks:
            hook.remove()
        runs = {
            _block_key(b, *chosen[b]): timer.prepare(block, captured[b])
            for b, block in blocks.items() if _block_key(b, *chosen[b]) not in table
        }
        if runs:
            table.update(timer.time(runs))
        else:
            timer.bar.advance()
    return table


def _first_block_per_branch(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    blocks: dict[int, torch.nn.Module] = {}
    for name, module in model.named_modules():
        match = _BLOCK_NAME.match(name)
        if match:
            blocks.setdefault(int(match.group(1)), module)
    return blocks
