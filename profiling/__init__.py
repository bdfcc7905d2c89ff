"""Profiler: parameters, FLOPs, latency, energy and memory of any HRViT config, with device fingerprint,
result cache and a calibrated latency predictor.

Every name loads on first use (most of them import torch), so ``hrvit-nas --help`` stays light.
"""

from hrvit_nas import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "profiling.analytic": ("AnalyticCounts", "analytic_counts"),
    "profiling.cache": ("CacheCorruptError", "ProfileCache", "default_cache_path"),
    "profiling.choices": ("DEFAULT_MAX_SECONDS", "check_max_seconds"),
    "profiling.counting": ("FlopReport", "count_flops", "count_params"),
    "profiling.device": ("DTYPES", "autocast", "check_dtype", "resolve_device", "synchronize"),
    "profiling.energy": ("EnergyMonitor", "EnergyUnavailable", "measure_energy", "open_backend"),
    "profiling.fingerprint": ("device_fingerprint", "fingerprint_id"),
    "profiling.interference": ("CONTENDED_RATIO", "ReferenceBaseline"),
    "profiling.measurements": ("QUANTITIES", "QUANTITY", "Measurements", "Quantity"),
    "profiling.latency": ("STRATEGIES", "THREADS_ENV", "TimingStrategy", "default_threads", "latency_stats",
                          "measure_latency", "measure_runs", "set_default_threads", "timing_strategy"),
    "profiling.predictor": ("LatencyPredictor", "PredictorAccuracy", "PredictorMismatch"),
    "profiling.profiler": ("ProfileRequest", "profile"),
    "profiling.result": ("EnergyResult", "LatencyStats", "ProfileResult"),
    "profiling.runtimes": ("RUNTIMES", "PreparedRun", "check_runtime", "prepare"),
})
