"""Calibrated additive latency predictor, so a search can screen thousands of candidates.

Within a search space only the blocks change: each branch ``b`` runs ``n_b`` identical HRViT blocks whose
cost depends on (window_b, ratio_b), while the stem, fusions, patch embeddings, norms and head are fixed.
So latency ~ alpha * sum_b n_b * block_ms[b, window_b, ratio_b] + beta: the block table comes from timing
each block variant in isolation (on inputs captured from a real forward pass); alpha and beta are fitted
on whole models measured on the same device, because separately timed blocks sum to only 0.86-0.90x of
the whole model. Every timing group also runs one fixed anchor model, and each group is rescaled by its
anchor, so load drift on a shared machine between groups does not skew the table or the fit. Held-out
configs, timed in the same groups as the calibration models, give the error report (share within
+-10%, Kendall tau).
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

import torch

from hrvit_nas.atomic import atomic_write_text
from hrvit_nas.errors import UserError
from hrvit_space.config import ArchConfig
from hrvit_space.space import SearchSpace
from profiling.device import check_dtype, resolve_device
from profiling.fingerprint import device_fingerprint
from profiling.latency import measure_runs, prepare_run

PREDICTOR_SCHEMA_VERSION = 1
_BLOCK_NAME = re.compile(r"stages\.\d+\.branches\.(\d+)\.blocks\.\d+$")
_GROUP = 6  # whole models timed interleaved at once (bounded memory)


class PredictorMismatch(UserError):
    """The predictor cannot answer for this config or device; rebuild it (``hrvit-nas profile build-predictor``)."""


@dataclass(frozen=True)
class PredictorAccuracy:
    """How well predictions matched measurements on held-out configs."""

    within10_pct: float
    kendall_tau: float
    mean_abs_error_pct: float
    n: int
    rows: tuple[tuple[str, float, float], ...] = ()  # (config hash, predicted ms, measured ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "within10_pct": self.within10_pct, "kendall_tau": self.kendall_tau,
            "mean_abs_error_pct": self.mean_abs_error_pct, "n": self.n, "rows": [list(r) for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictorAccuracy:
        return cls(**{**data, "rows": tuple(tuple(r) for r in data.get("rows", ()))})


def accuracy_of(predicted: Sequence[float], measured: Sequence[float], names: Sequence[str] = ()) -> PredictorAccuracy:
    from scipy.stats import kendalltau

    errors = [abs(p - m) / m for p, m in zip(predicted, measured)]
    tau = float(kendalltau(predicted, measured).statistic) if len(measured) > 1 else float("nan")
    return PredictorAccuracy(
        within10_pct=100.0 * sum(e <= 0.10 for e in errors) / len(errors),
        kendall_tau=tau,
        mean_abs_error_pct=100.0 * sum(errors) / len(errors),
        n=len(errors),
        rows=tuple(zip(names or [""] * len(errors), predicted, measured)),
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


def _blocks_per_branch(config: ArchConfig) -> list[int]:
    return [sum(module[b] for module in config.depths if b < len(module)) for b in range(config.num_branches)]


@dataclass
class LatencyPredictor:
    """``predict(config) -> ms`` for configs sharing the structure it was built on, on the same device."""

    device: str
    fingerprint: dict[str, Any]
    structure: dict[str, Any]
    batch: int
    dtype: str
    block_ms: dict[str, float]
    alpha: float = 1.0
    beta: float = 0.0
    accuracy: PredictorAccuracy | None = None
    calibration: list[tuple[str, float]] = field(default_factory=list)

    # ------------------------------------------------------------------------------------- predict
    def raw_ms(self, config: ArchConfig) -> float:
        """Uncalibrated sum of the block table over ``config``'s blocks."""
        if _structure(config, tuple(self.structure["input_size"])) != self.structure:
            raise PredictorMismatch(
                f"config {config.name or config.content_hash()} differs from the predictor's fixed architecture "
                "(channels, head, dim_head, branches per module or input size); rebuild the predictor for its space"
            )
        total = 0.0
        for b, count in enumerate(_blocks_per_branch(config)):
            key = _block_key(b, config.window_sizes[b], config.mlp_ratios[b])
            if count and key not in self.block_ms:
                raise PredictorMismatch(
                    f"predictor has no timing for branch {b} with window {config.window_sizes[b]} and ratio "
                    f"{config.mlp_ratios[b]}; rebuild it over a space that includes these choices"
                )
            total += count * self.block_ms.get(key, 0.0)
        return total

    def predict(self, config: ArchConfig) -> float:
        """Predicted latency in ms (same batch, dtype, input size and device as the build)."""
        return self.alpha * self.raw_ms(config) + self.beta

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
        calibration: int = 8,
        holdout: int = 20,
        seed: int = 0,
        warmup_s: float = 0.5,
        trials: int = 10,
        threads: int | None = None,
    ) -> LatencyPredictor:
        """Time block variants, fit the calibration on ``calibration`` whole models, report on ``holdout`` others.

        With a list of configs, they are the calibration set (at least 3) and no held-out report is made.
        """
        resolved = resolve_device(device)
        check_dtype(dtype, resolved)
        if isinstance(space_or_configs, SearchSpace):
            space = space_or_configs
            base = space.base
            windows, ratios = space.window_choices, space.ratio_choices
            rng = random.Random(seed)
            calibrate = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(max(0, calibration - 2))]
            held_out = [space.sample(rng) for _ in range(holdout)]
        else:
            calibrate, held_out = list(space_or_configs), []
            if len(calibrate) < 3:
                raise UserError(f"a latency predictor needs at least 3 calibration configs, got {len(calibrate)}")
            base = calibrate[0]
            windows = [sorted({c.window_sizes[b] for c in calibrate}) for b in range(base.num_branches)]
            ratios = [sorted({c.mlp_ratios[b] for c in calibrate}) for b in range(base.num_branches)]
        size = tuple(input_size or base.input_size)
        timer = _AnchoredTimer(base.replace(input_size=size), resolved, batch, dtype,
                               {"warmup_s": warmup_s, "trials": trials, "max_trials": trials, "threads": threads})
        block_ms = _time_blocks(base, windows, ratios, size, timer)
        # Calibration and held-out models are shuffled into the same interleaved groups: drift hits both alike.
        models = calibrate + held_out
        order = random.Random(seed).sample(range(len(models)), len(models))
        timed = timer.normalised(timer.time_models([models[i] for i in order], size))
        measured = {str(index): timed[str(position)] for position, index in enumerate(order)}
        predictor = cls(
            device=str(resolved), fingerprint=device_fingerprint(resolved, threads=threads or torch.get_num_threads()),
            structure=_structure(base, size), batch=batch, dtype=dtype, block_ms=timer.normalised(block_ms),
        )
        calibration_ms = [measured[str(i)] for i in range(len(calibrate))]
        predictor._calibrate([predictor.raw_ms(c) for c in calibrate], calibration_ms)
        predictor.calibration = [(c.content_hash(), ms) for c, ms in zip(calibrate, calibration_ms)]
        if held_out:
            predictor.accuracy = predictor.evaluate(held_out, [measured[str(len(calibrate) + i)] for i in range(len(held_out))])
        return predictor

    def _calibrate(self, raw: list[float], measured: list[float]) -> None:
        """Least-squares fit of measured = alpha * raw + beta (beta >= 0: the fixed parts cost time)."""
        n = len(raw)
        mean_raw, mean_measured = sum(raw) / n, sum(measured) / n
        spread = sum((r - mean_raw) ** 2 for r in raw)
        alpha = sum((r - mean_raw) * (m - mean_measured) for r, m in zip(raw, measured)) / spread if spread else 0.0
        beta = mean_measured - alpha * mean_raw
        if alpha <= 0 or beta < 0:  # degenerate fit: fall back to a pure scale
            alpha, beta = sum(m * r for r, m in zip(raw, measured)) / sum(r * r for r in raw), 0.0
        self.alpha, self.beta = alpha, beta

    def evaluate(self, configs: Sequence[ArchConfig], measured_ms: Sequence[float]) -> PredictorAccuracy:
        return accuracy_of([self.predict(c) for c in configs], list(measured_ms), [c.content_hash() for c in configs])

    # ------------------------------------------------------------------------------------ save/load
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PREDICTOR_SCHEMA_VERSION, "device": self.device, "fingerprint": self.fingerprint,
            "structure": self.structure, "batch": self.batch, "dtype": self.dtype, "block_ms": self.block_ms,
            "alpha": self.alpha, "beta": self.beta, "calibration": [list(c) for c in self.calibration],
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None, *, check_device: bool = True) -> LatencyPredictor:
        """Load and refuse a predictor measured on another device (fingerprint mismatch)."""
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
        predictor = cls(**{**data, "calibration": [tuple(c) for c in data["calibration"]]})
        predictor.accuracy = PredictorAccuracy.from_dict(accuracy) if accuracy else None
        if check_device:
            here = device_fingerprint(resolve_device(device or predictor.device), threads=predictor.fingerprint.get("threads"), volatile=False)
            if here["fingerprint_id"] != predictor.fingerprint["fingerprint_id"]:
                raise PredictorMismatch(
                    f"latency predictor {path} was measured on another device or software stack "
                    f"({predictor.fingerprint.get('name')}, torch {predictor.fingerprint.get('torch')}, "
                    f"id {predictor.fingerprint['fingerprint_id']}; here: {here.get('name')}, torch {here.get('torch')}, "
                    f"id {here['fingerprint_id']}); rebuild it here with `hrvit-nas profile build-predictor`"
                )
        return predictor


class _AnchoredTimer:
    """Times runs in interleaved groups that always include one fixed anchor model.

    On a shared machine the load drifts between groups; dividing each group by its anchor's median (and
    multiplying by the anchor's overall median) puts block and whole-model timings on one scale.
    """

    def __init__(self, anchor: ArchConfig, device: torch.device, batch: int, dtype: str, timing: dict[str, Any]) -> None:
        from hrvit_space.model import build_model

        self.device, self.batch, self.dtype, self.timing = device, batch, dtype, timing
        self._anchor = prepare_run(build_model(anchor), torch.randn(batch, anchor.in_chans, *anchor.input_size), device, dtype=dtype)
        self._scales: dict[str, float] = {}  # measurement name -> anchor median of its group

    def time(self, runs: dict[str, Any]) -> dict[str, float]:
        stats = measure_runs({**runs, "__anchor__": self._anchor}, self.device, **self.timing)
        anchor = stats.pop("__anchor__").median
        self._scales.update({name: anchor for name in stats})
        return {name: s.median for name, s in stats.items()}

    def time_models(self, configs: Sequence[ArchConfig], input_size: tuple[int, int]) -> dict[str, float]:
        """Median ms per config (keyed by position), in groups of ``_GROUP``."""
        from hrvit_space.model import build_model

        result: dict[str, float] = {}
        for start in range(0, len(configs), _GROUP):
            inputs = torch.randn(self.batch, configs[0].in_chans, *input_size)
            result.update(self.time({
                str(start + i): prepare_run(build_model(c.replace(input_size=input_size)), inputs, self.device, dtype=self.dtype)
                for i, c in enumerate(configs[start : start + _GROUP])
            }))
        return result

    def normalised(self, measured: dict[str, float]) -> dict[str, float]:
        reference = statistics.median(self._scales.values())
        return {name: ms * reference / self._scales[name] for name, ms in measured.items()}


def _time_blocks(
    base: ArchConfig, windows: Sequence[Sequence[int]], ratios: Sequence[Sequence[float]], input_size: tuple[int, int],
    timer: _AnchoredTimer,
) -> dict[str, float]:
    """Median ms of one block per (branch, window, ratio), timed on inputs captured from a probe model."""
    from hrvit_space.model import build_model

    variants = [list(itertools.product(w, r)) for w, r in zip(windows, ratios)]
    table: dict[str, float] = {}
    for probe in range(max(len(v) for v in variants)):
        chosen = [v[probe % len(v)] for v in variants]
        config = base.replace(  # a valid base has at least one block per branch to time
            input_size=input_size, window_sizes=tuple(w for w, _ in chosen), mlp_ratios=tuple(r for _, r in chosen)
        )
        model = build_model(config).eval()
        blocks = _first_block_per_branch(model)
        captured: dict[int, torch.Tensor] = {}
        hooks = [block.register_forward_pre_hook(lambda mod, args, b=b, store=captured: store.setdefault(b, args[0].detach().clone()))
                 for b, block in blocks.items()]
        with torch.no_grad():
            model(torch.randn(timer.batch, config.in_chans, *input_size))
        for hook in hooks:
            hook.remove()
        runs = {
            _block_key(b, *chosen[b]): prepare_run(block, captured[b], timer.device, dtype=timer.dtype)
            for b, block in blocks.items() if _block_key(b, *chosen[b]) not in table
        }
        if runs:
            table.update(timer.time(runs))
    return table


def _first_block_per_branch(model: torch.nn.Module) -> dict[int, torch.nn.Module]:
    blocks: dict[int, torch.nn.Module] = {}
    for name, module in model.named_modules():
        match = _BLOCK_NAME.match(name)
        if match:
            blocks.setdefault(int(match.group(1)), module)
    return blocks
