"""Deployment runtimes the profiler times a model in: what gets shipped, not only eager PyTorch.

``prepare(name, model, inputs, device, dtype=...)`` returns a ``PreparedRun``: a no-argument inference
call, the runtime's version (part of every result and cache key, so an upgrade re-measures) and, for
every runtime other than eager, the largest absolute difference of its outputs from eager PyTorch, so a
fast but wrong engine is visible. A runtime this machine cannot run is a ``UserError`` naming why.

- ``eager``: PyTorch eager (autocast for fp16/bf16).
- ``compile``: ``torch.compile`` (inductor).
- ``cuda-graphs``: the eager forward captured once and replayed as a CUDA graph (CUDA only).
- ``onnxruntime``: the model exported to ONNX (TorchScript exporter, opset 18) and run in ONNX Runtime,
  CPU execution provider on CPU, CUDA execution provider on a GPU.
- ``onnxruntime-trt``: ONNX Runtime's TensorRT execution provider (CUDA only).
- ``tensorrt``: a ``torch-tensorrt`` engine (CUDA only).
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hrvit_nas import UserError
from profiling.choices import RUNTIMES
from profiling.device import DTYPES, autocast, check_dtype

_CUDA_ONLY = {"cuda-graphs", "onnxruntime-trt", "tensorrt"}
_ONNX_OPSET = 18


@dataclass(frozen=True)
class PreparedRun:
    run: Callable[[], object]
    runtime: str
    version: str
    max_abs_diff: float | None = None
    torch_memory: bool = True  # False: allocations happen outside torch, so torch's memory statistics miss them


def check_runtime(name: str, device: torch.device, dtype: str) -> None:
    """Refuse, before any work, a runtime that cannot run here."""
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime {name!r}; use one of {', '.join(RUNTIMES)}")
    check_dtype(dtype, device)
    if name in _CUDA_ONLY and device.type != "cuda":
        raise UserError(f"runtime {name} needs a CUDA device (this run is on {device}); use --device cuda, or --runtime eager|compile|onnxruntime on CPU")
    if name.startswith("onnxruntime"):
        _onnxruntime_providers(name, device)
        if dtype == "bf16":
            raise UserError(f"runtime {name} runs fp32 or fp16 models (bf16 ONNX kernels are missing); use --dtype fp32 or fp16")
        if dtype == "fp16" and device.type != "cuda":
            raise UserError("runtime onnxruntime runs fp16 only on CUDA; use --dtype fp32 on CPU")
    if name == "tensorrt":
        _require("torch_tensorrt", "runtime tensorrt needs torch-tensorrt: pip install 'hrvit-nas[tensorrt]' (a build matching your torch and CUDA)")


def runtime_version(name: str) -> str:
    """The software that executes the model under ``name`` (torch, onnxruntime or TensorRT versions; for
    eager PyTorch also the version of this package's eager forward)."""
    if name.startswith("onnxruntime"):
        return f"onnxruntime {importlib.import_module('onnxruntime').__version__}"
    if name == "tensorrt":
        trt = importlib.import_module("torch_tensorrt")
        return f"torch-tensorrt {trt.__version__}, torch {torch.__version__}"
    version = f"torch {torch.__version__}" + (f", cuda {torch.version.cuda}" if torch.version.cuda else "")
    if name in ("eager", "cuda-graphs"):  # these run this package's eager forward, whose speed moves between releases
        from hrvit_space import EAGER_FORWARD_VERSION

        version += f", eager forward v{EAGER_FORWARD_VERSION}"
    return version


def _require(module: str, message: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(message)


def _onnxruntime_providers(name: str, device: torch.device) -> list:
    for module in ("onnx", "onnxruntime"):
        _require(module, f"runtime {name} needs onnx and onnxruntime: pip install 'hrvit-nas[onnx]' (onnxruntime-gpu for CUDA)")
    import onnxruntime

    wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}[device.type]
    if name == "onnxruntime-trt":
        wanted = "TensorrtExecutionProvider"
    available = onnxruntime.get_available_providers()
    if wanted not in available:
        raise UserError(
            f"runtime {name} on {device.type} needs ONNX Runtime's {wanted}, which this onnxruntime "
            f"{onnxruntime.__version__} lacks (it has {', '.join(available)}); install onnxruntime-gpu (with TensorRT for the TensorRT EP)"
        )
    if wanted == "CPUExecutionProvider":
        return [wanted]
    options = {"device_id": device.index or 0}
    return [(wanted, options), ("CUDAExecutionProvider", options)] if name == "onnxruntime-trt" else [(wanted, options)]


def _outputs(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _outputs(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _outputs(v)]
    return []


def _max_abs_diff(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    if len(expected) != len(got):
        raise RuntimeError(f"runtime returned {len(got)} outputs, PyTorch {len(expected)}")
    return max((float((e.float().cpu() - g.float().cpu()).abs().max()) for e, g in zip(expected, got)), default=0.0)


def prepare(
    name: str,
    model: nn.Module,
    inputs: torch.Tensor,
    device: torch.device,
    *,
    dtype: str = "fp32",
    channels_last: bool = False,
    threads: int | None = None,
) -> PreparedRun:
    """A no-argument inference call of ``model`` on ``inputs`` under runtime ``name``."""
    check_runtime(name, device, dtype)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).eval()
    inputs = inputs.to(device=device, memory_format=memory_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def eager() -> object:
        with torch.inference_mode(), autocast(device, dtype):
            return model(inputs)

    version = runtime_version(name)
    if name == "eager":
        return PreparedRun(eager, name, version)
    expected = _outputs(eager())
    if name == "compile":
        compiled = torch.compile(model)

        def run() -> object:
            with torch.inference_mode(), autocast(device, dtype):
                return compiled(inputs)
    elif name == "cuda-graphs":
        run = _cuda_graph(eager, device)
    elif name == "tensorrt":
        run = _torch_tensorrt(model, inputs, dtype)
    else:
        run, fetch = _onnxruntime(name, model, inputs, device, dtype, threads)
        return PreparedRun(run, name, version, _max_abs_diff(expected, fetch()), torch_memory=False)
    diff = _max_abs_diff(expected, _outputs(run()))
    return PreparedRun(run, name, version, diff)


def _cuda_graph(eager: Callable[[], object], device: torch.device) -> Callable[[], object]:
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            eager()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = eager()

    def replay() -> object:
        graph.replay()
        return outputs

    return replay


def _torch_tensorrt(model: nn.Module, inputs: torch.Tensor, dtype: str) -> Callable[[], object]:
    import torch_tensorrt

    engine = torch_tensorrt.compile(model, ir="dynamo", inputs=[inputs], enabled_precisions={DTYPES[dtype]})

    def run() -> object:
        with torch.inference_mode():
            return engine(inputs)

    return run


def _onnxruntime(
    name: str, model: nn.Module, inputs: torch.Tensor, device: torch.device, dtype: str, threads: int | None
) -> tuple[Callable[[], object], Callable[[], list[torch.Tensor]]]:
    """Export to a temporary ONNX file (fp16 weights and input for --dtype fp16) and open a session.

    Returns the timed call and one that also fetches the outputs to the host (for the check against PyTorch).
    """
    import onnxruntime

    half = dtype == "fp16"
    example = inputs.half() if half else inputs
    exported = model.half() if half else model
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    with tempfile.TemporaryDirectory(prefix="hrvit-onnx-") as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and constant-folding notes, not errors
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(exported, (example,), str(path), dynamo=False, opset_version=_ONNX_OPSET, input_names=["image"])
        session = onnxruntime.InferenceSession(str(path), options, providers=_onnxruntime_providers(name, device))
    if half:
        model.float()
    if device.type == "cpu":
        feed = {"image": example.numpy()}
        run = lambda: session.run(None, feed)  # noqa: E731
        return run, lambda: [torch.from_numpy(value) for value in run()]
    binding = session.io_binding()  # device-resident input and outputs: time the engine, not host copies
    example = example.contiguous()
    binding.bind_input("image", "cuda", device.index or 0, example.numpy(force=True).dtype, tuple(example.shape), example.data_ptr())
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", device.index or 0)

    def fetch() -> list[torch.Tensor]:
        session.run_with_iobinding(binding)
        return [torch.from_numpy(value) for value in binding.copy_outputs_to_cpu()]

    return lambda: session.run_with_iobinding(binding), fetch
