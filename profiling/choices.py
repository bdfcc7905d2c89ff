"""The profiler's option values that ``hrvit-nas --help`` shows, apart from the torch-heavy modules that
use them, so the help page loads without torch."""

RUNTIMES = ("eager", "compile", "cuda-graphs", "onnxruntime", "onnxruntime-trt", "tensorrt")
DEFAULT_MAX_SECONDS = 60.0  # one latency measurement, warm-up and back-offs included
