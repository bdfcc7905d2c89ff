"""Result records of the profiler: plain dataclasses with flat, unit-bearing dict forms.

``to_dict`` is what the cache, the CLI's ``--json`` and search trial records store; every key that holds
a quantity carries its unit (``latency_ms_median``, ``energy_mj_per_image``, ``params_m``, ``gmacs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RESULT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds over ``n`` timing trials (each trial averages several calls).

    ``stable`` is False when the median is not known to about 2% (``latency.STABLE_RELATIVE_ERROR``): compare
    such numbers only after re-measuring. ``contended`` is True when other processes slowed the interleaved
    reference kernel by more than ``interference.CONTENDED_RATIO`` (``interference`` is that slowdown), or
    kept its threads waiting for a core more than ``interference.CONTENDED_WAIT`` of the time, even after
    re-measuring: such a number is not this model's speed, and it is never cached. ``anchored_median``
    (CPU) divides each trial by the reference kernel's trial of the same round and scales by the
    reference's quiet time here: the latency at this machine's quiet speed, less moved by host drift
    that slows both (``benchmarks/profile_stability.py`` prints the spread of both).
    """

    median: float
    p10: float
    p90: float
    iqr: float
    mean: float
    cv: float
    n: int
    stable: bool
    samples: tuple[float, ...] = ()
    calls_per_trial: int = 1
    threads: int | None = None
    p99: float | None = None
    trimmed_mean: float | None = None
    interference: float | None = None
    contended: bool = False
    load_avg_1m: float | None = None
    cpu_steal_pct: float | None = None
    cpu_wait_pct: float | None = None  # share of timed thread-time spent runnable but without a core
    attempts: int = 1
    anchored_median: float | None = None  # median per-round ratio to the reference kernel x its quiet time (CPU)

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency_ms_median": self.median,
            "latency_ms_p10": self.p10,
            "latency_ms_p90": self.p90,
            "latency_ms_iqr": self.iqr,
            "latency_ms_mean": self.mean,
            "latency_cv": self.cv,
            "latency_n": self.n,
            "latency_stable": self.stable,
            "latency_samples_ms": list(self.samples),
            "latency_calls_per_trial": self.calls_per_trial,
            "latency_threads": self.threads,
            "latency_ms_p99": self.p99,
            "latency_ms_trimmed_mean": self.trimmed_mean,
            "latency_interference_ratio": self.interference,
            "latency_contended": self.contended,
            "latency_load_avg_1m": self.load_avg_1m,
            "latency_cpu_steal_pct": self.cpu_steal_pct,
            "latency_cpu_wait_pct": self.cpu_wait_pct,
            "latency_attempts": self.attempts,
            "latency_ms_anchored_median": self.anchored_median,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyStats | None:
        if data.get("latency_ms_median") is None:
            return None
        return cls(
            median=data["latency_ms_median"], p10=data["latency_ms_p10"], p90=data["latency_ms_p90"],
            iqr=data["latency_ms_iqr"], mean=data["latency_ms_mean"], cv=data["latency_cv"],
            n=data["latency_n"], stable=data["latency_stable"], samples=tuple(data.get("latency_samples_ms", ())),
            calls_per_trial=data.get("latency_calls_per_trial", 1), threads=data.get("latency_threads"),
            p99=data.get("latency_ms_p99"), trimmed_mean=data.get("latency_ms_trimmed_mean"),
            interference=data.get("latency_interference_ratio"), contended=data.get("latency_contended", False),
            load_avg_1m=data.get("latency_load_avg_1m"), cpu_steal_pct=data.get("latency_cpu_steal_pct"),
            cpu_wait_pct=data.get("latency_cpu_wait_pct"),
            attempts=data.get("latency_attempts", 1), anchored_median=data.get("latency_ms_anchored_median"),
        )


@dataclass(frozen=True)
class EnergyResult:
    """Energy per image in millijoules; all numbers are None when ``unavailable_reason`` says why.

    ``mj_per_image`` is gross (what the device drew while running: the search objective); ``net`` subtracts
    ``idle_w`` measured over the same duration with the runtime (e.g. the CUDA context) alive.
    """

    mj_per_image: float | None = None
    net_mj_per_image: float | None = None
    idle_w: float | None = None
    backend: str | None = None
    window_s: float | None = None
    images: int | None = None
    unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        return self.mj_per_image is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "energy_mj_per_image": self.mj_per_image,
            "energy_net_mj_per_image": self.net_mj_per_image,
            "energy_idle_w": self.idle_w,
            "energy_backend": self.backend,
            "energy_window_s": self.window_s,
            "energy_images": self.images,
            "energy_unavailable_reason": self.unavailable_reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnergyResult | None:
        if data.get("energy_backend") is None and data.get("energy_unavailable_reason") is None:
            return None
        return cls(
            mj_per_image=data.get("energy_mj_per_image"), net_mj_per_image=data.get("energy_net_mj_per_image"),
            idle_w=data.get("energy_idle_w"), backend=data.get("energy_backend"), window_s=data.get("energy_window_s"),
            images=data.get("energy_images"), unavailable_reason=data.get("energy_unavailable_reason"),
        )

    def describe(self) -> str:
        if not self.available:
            return f"unavailable ({self.unavailable_reason})"
        net = f", net {self.net_mj_per_image:.2f} mJ above {self.idle_w:.1f} W idle" if self.net_mj_per_image is not None else ""
        return f"{self.mj_per_image:.2f} mJ/image gross{net} [{self.backend}, {self.window_s:.1f} s window]"


@dataclass(frozen=True)
class ProfileResult:
    """Everything the profiler knows about one (config, input, batch, dtype, options, device).

    Compute convention: ``macs`` counts the multiply-accumulates of convolutions, linear layers, matmuls and
    attention (Q.K^T and A.V); ``flops`` = 2 x ``macs``. Cheap elementwise work (norms, activations,
    softmax, adds, interpolation) is reported apart in ``other_ops`` (one op per element, fvcore's
    convention), so no operator is silently dropped; ``uncounted_ops`` lists any op with no handle.
    """

    config_hash: str
    params: int | None = None
    params_by_component: dict[str, int] = field(default_factory=dict)
    params_by_branch: dict[str, int] = field(default_factory=dict)
    macs: int | None = None
    macs_by_component: dict[str, int] = field(default_factory=dict)
    macs_by_branch: dict[str, int] = field(default_factory=dict)
    macs_by_operator: dict[str, int] = field(default_factory=dict)
    other_ops: int | None = None
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    latency: LatencyStats | None = None
    energy: EnergyResult | None = None
    peak_memory_bytes: int | None = None
    peak_memory_source: str | None = None  # how it was measured, or why it is unavailable
    runtime_max_abs_diff: float | None = None  # runtime's outputs vs eager PyTorch (None for eager itself)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    input_size: tuple[int, int] = (512, 512)
    batch: int = 1
    dtype: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    cached: bool = False

    @property
    def flops(self) -> int | None:
        return None if self.macs is None else 2 * self.macs

    @property
    def params_m(self) -> float | None:
        return None if self.params is None else self.params / 1e6

    @property
    def gmacs(self) -> float | None:
        return None if self.macs is None else self.macs / 1e9

    @property
    def gflops(self) -> float | None:
        return None if self.macs is None else 2 * self.macs / 1e9

    @property
    def latency_ms(self) -> float | None:
        """Median per-call latency (ms per batch), the figure budgets and objectives use."""
        return None if self.latency is None else self.latency.median

    @property
    def contended(self) -> bool:
        return self.latency is not None and self.latency.contended

    @property
    def runtime(self) -> str:
        return self.options.get("runtime", "eager")

    @property
    def fingerprint_id(self) -> str | None:
        return self.fingerprint.get("fingerprint_id")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": RESULT_SCHEMA_VERSION,
            "config_hash": self.config_hash,
            "params": self.params,
            "params_m": self.params_m,
            "params_by_component": dict(self.params_by_component),
            "params_by_branch": dict(self.params_by_branch),
            "macs": self.macs,
            "flops": self.flops,
            "gmacs": self.gmacs,
            "gflops": self.gflops,
            "macs_by_component": dict(self.macs_by_component),
            "macs_by_branch": dict(self.macs_by_branch),
            "macs_by_operator": dict(self.macs_by_operator),
            "other_ops": self.other_ops,
            "uncounted_ops": dict(self.uncounted_ops),
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_source": self.peak_memory_source,
            "runtime": self.runtime,
            "runtime_version": self.options.get("runtime_version"),
            "runtime_max_abs_diff": self.runtime_max_abs_diff,
            "fingerprint": dict(self.fingerprint),
            "fingerprint_id": self.fingerprint_id,
            "device": self.device,
            "input_size": list(self.input_size),
            "batch": self.batch,
            "dtype": self.dtype,
            "options": dict(self.options),
            "error": self.error,
        }
        data.update(LatencyStats.to_dict(self.latency) if self.latency else {"latency_ms_median": None, "latency_contended": False})
        data.update(self.energy.to_dict() if self.energy else {"energy_mj_per_image": None})
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProfileResult:
        names = {f.name for f in dataclasses.fields(cls)} - {"latency", "energy", "cached"}
        kwargs = {name: data[name] for name in names if name in data}
        kwargs["input_size"] = tuple(kwargs.get("input_size", (512, 512)))
        return cls(**kwargs, latency=LatencyStats.from_dict(data), energy=EnergyResult.from_dict(data))
