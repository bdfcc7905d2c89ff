"""The profiler's option values that ``hrvit-nas --help`` shows (and their checks), apart from the
torch-heavy modules that use them, so the help page loads without torch."""

from hrvit_nas import UserError

RUNTIMES = ("eager", "compile", "cuda-graphs", "onnxruntime", "onnxruntime-trt", "tensorrt")
DEFAULT_MAX_SECONDS = 60.0  # one latency measurement, warm-up and back-offs included


def check_max_seconds(value: float | None, option: str = "max_seconds") -> float | None:
    """The bound of one latency measurement: ``None`` (unbounded) or a positive number of seconds."""
    if value is not None and not value > 0:
        raise UserError(f"{option} {value!r} is invalid; give a positive number of seconds")
    return value
