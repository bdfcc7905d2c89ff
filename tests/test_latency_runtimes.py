"""Deployment runtimes: ONNX Runtime on CPU for real (outputs checked against PyTorch), runtime and
version in every result and cache key, CUDA-only runtimes refused with their reason without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hrvit_space as model_module  # the face the profiler builds through
from hrvit_nas.cli import main as run_cli
from hrvit_nas.errors import UserError
from hrvit_space import EAGER_FORWARD_VERSION
from hrvit_space.model import build_model
from profiling import ProfileCache, prepare, profile
from test_profiling import TINY

COUNTS = {"device": "cpu", "threads": 1, "measure_latency": False}
HAS_GPU = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HRVIT_NAS_CACHE_DIR", str(tmp_path / "cache"))


def test_onnxruntime_cpu_matches_pytorch():
    pytest.importorskip("onnxruntime")
    model, x = build_model(TINY).eval(), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    prepared = prepare("onnxruntime", model, x, torch.device("cpu"), threads=1)
    got = prepared.run()  # what is timed is the real session call
    np.testing.assert_allclose(got[0], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert prepared.max_abs_diff < 1e-4 and prepared.version.startswith("onnxruntime ") and not prepared.torch_memory


def test_profile_records_the_runtime_and_its_version_and_keys_the_cache_on_them(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    with ProfileCache(tmp_path / "p.sqlite") as cache:
        timed = {"device": "cpu", "threads": 1, "cache": cache, "max_seconds": 2}
        onnx = profile(TINY, runtime="onnxruntime", **timed)
        assert onnx.runtime == "onnxruntime" and onnx.to_dict()["runtime_version"].startswith("onnxruntime ")
        assert onnx.runtime_max_abs_diff < 1e-4 and onnx.latency_ms > 0
        assert onnx.peak_memory_bytes is None and "unavailable" in onnx.peak_memory_source
        eager = profile(TINY, **COUNTS, cache=cache)
        assert eager.runtime == "eager" and eager.options["runtime_version"].startswith("torch ")
        assert eager.options["runtime_version"].endswith(f"eager forward v{EAGER_FORWARD_VERSION}")  # a faster forward re-measures

        def no_build(config):
            raise AssertionError("a cache miss builds the model")

        monkeypatch.setattr(model_module, "build_model", no_build)
        assert profile(TINY, **COUNTS, cache=cache).cached  # same runtime and version: a hit
        with pytest.raises(AssertionError, match="cache miss"):  # another runtime: a miss
            profile(TINY, **{**COUNTS, "measure_latency": True}, runtime="compile", cache=cache)
        monkeypatch.setattr("profiling.profiler.runtime_version", lambda name: "torch 99.0")
        with pytest.raises(AssertionError, match="cache miss"):  # an upgraded runtime: a miss
            profile(TINY, **COUNTS, cache=cache)


@pytest.mark.skipif(HAS_GPU, reason="checks the behaviour without a GPU")
@pytest.mark.parametrize("runtime", ["cuda-graphs", "tensorrt", "onnxruntime-trt"])
def test_cuda_runtimes_without_a_gpu_are_refused_with_the_reason(runtime, capsys):
    with pytest.raises(UserError, match=f"runtime {runtime} needs a CUDA device"):
        profile(TINY, runtime=runtime, **COUNTS, cache=None)
    assert run_cli(["profile", "--preset", "b1", "--device", "cpu", "--runtime", runtime, "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA device" in err and "Traceback" not in err


@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("runtime, dtype", [("eager", "fp16"), ("cuda-graphs", "fp32"), ("compile", "fp32"),
                                            ("onnxruntime", "fp32"), ("tensorrt", "fp16")])
def test_cuda_runtimes_run_and_match_pytorch(runtime, dtype):
    try:
        result = profile(TINY, device="cuda", runtime=runtime, dtype=dtype, cache=None, max_seconds=5)
    except UserError as missing:  # e.g. torch-tensorrt or onnxruntime-gpu not installed
        pytest.skip(str(missing))
    assert result.error is None and result.latency_ms > 0
    assert result.runtime_max_abs_diff is None or result.runtime_max_abs_diff < (5e-2 if dtype != "fp32" else 1e-3)
