"""Profiler: parameters, FLOPs, latency, energy and memory of any HRViT config, with device fingerprint,
result cache and a calibrated latency predictor."""

from profiling.analytic import AnalyticCounts, analytic_counts
from profiling.cache import CacheCorruptError, ProfileCache, default_cache_path
from profiling.counting import FlopReport, count_flops, count_params
from profiling.energy import (
    EnergyMonitor,
    EnergyUnavailable,
    measure_energy,
    open_backend,
)
from profiling.fingerprint import device_fingerprint, fingerprint_id
from profiling.interference import CONTENDED_RATIO, ReferenceBaseline
from profiling.latency import default_threads, latency_stats, measure_latency, measure_runs, set_default_threads
from profiling.predictor import LatencyPredictor, PredictorAccuracy, PredictorMismatch
from profiling.profiler import profile
from profiling.result import EnergyResult, LatencyStats, ProfileResult
from profiling.runtimes import RUNTIMES, PreparedRun, prepare

__all__ = [
    "AnalyticCounts", "analytic_counts", "CacheCorruptError", "EnergyMonitor", "EnergyResult", "EnergyUnavailable", "FlopReport", "LatencyPredictor",
    "LatencyStats", "PredictorAccuracy", "PredictorMismatch", "ProfileCache", "ProfileResult", "count_flops",
    "count_params", "default_cache_path", "device_fingerprint", "fingerprint_id", "latency_stats", "measure_energy",
    "measure_latency", "measure_runs", "open_backend", "profile",
]
