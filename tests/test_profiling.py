"""Profiler on real (tiny) HRViT models: counts by hand and against torch's FlopCounterMode, the cache,
isolation, graceful degradation without a GPU, the predictor's mechanics and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import hrvit_space as model_module  # the face the profiler builds through
from hrvit_nas.cli import main as run_cli
from hrvit_nas.errors import UserError
from hrvit_space.attention import CrossShapedAttention
from hrvit_space.config import HeadConfig, preset
from hrvit_space.model import Fusion, build_model
from hrvit_space.space import SearchSpace
from profiling import (
    LatencyPredictor,
    PredictorMismatch,
    ProfileCache,
    count_flops,
    count_params,
    profile,
)
from profiling.predictor import accuracy_of, fit_branch_scales

TINY = preset("b1").replace(
    channels=(16, 32, 48, 64), input_size=(64, 64), window_sizes=(1, 1, 2, 2), mlp_ratios=(2, 2, 2, 2), dim_head=8,
    depths=((1,), (1, 1), (1, 1, 1), (1, 1, 1, 1)), head=HeadConfig(width=16, num_classes=4), name="tiny",
)
FAST = {"device": "cpu", "threads": 1, "measure_latency": False}


def whole(name: str) -> tuple[str, None]:
    return ("all", None)


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory, monkeypatch):
    """The interference baseline and default cache live next to each other: keep both out of $HOME."""
    monkeypatch.setenv("HRVIT_NAS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hrvit-cache"))


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------- counts by hand
@pytest.mark.parametrize("size, window", [(8, 2), (7, 3)])  # 7 rows in strips of 3: padded to 9, keys masked
def test_cross_shaped_attention_macs_by_hand(size, window):
    dim, dim_head = 16, 4
    attention = CrossShapedAttention(dim, dim_head, window).eval()
    report = count_flops(attention, torch.randn(1, size, size, dim), component_of=whole)
    tokens, half = size * size, dim // 2
    padded = math.ceil(size / window) * window
    strip_tokens = window * size
    per_direction = (padded // window) * strip_tokens * strip_tokens * half * 2  # Q.K^T and A.V over all heads
    linear = tokens * dim * 2 * dim + tokens * dim * dim  # qv projection, output projection
    local = tokens * dim * 9  # depthwise 3x3
    assert report.by_operator["attention_matmul"] == 2 * per_direction
    assert report.macs == linear + local + 2 * per_direction
    assert report.uncounted == {}


def test_fusion_macs_by_hand():
    fusion = Fusion([8, 16], [8, 16, 32]).eval()
    high, low = torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)
    report = count_flops(fusion, ([high, low],), component_of=whole)
    at8, at4 = 8 * 8, 4 * 4
    expected = (
        at8 * 16 * 8  # branch 1 -> 0: 1x1 conv at low resolution, then nearest upsampling
        + at8 * 8 * 9 + at8 * 8 * 16  # branch 0 -> 1: depthwise 3x3 stride 2, 1x1
        + at4 * 8 * 25 + at4 * 8 * 32  # branch 0 -> new 2: depthwise 5x5 stride 4, 1x1
        + at4 * 16 * 9 + at4 * 16 * 32  # branch 1 -> new 2: depthwise 3x3 stride 2, 1x1
    )
    assert report.macs == expected
    assert report.by_operator["upsample_nearest2d"] == 8 * 16 * 16


def test_model_counts_are_complete_and_match_torch_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    report = count_flops(model, x)
    assert report.uncounted == {}
    assert sum(report.macs_by_component.values()) == report.macs == sum(report.macs_by_branch.values())
    assert {"stem", "fusion", "attention", "des", "mixcfn", "head"} <= set(report.macs_by_component)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    assert counter.get_total_flops() // 2 == report.macs  # it counts 2 FLOPs per MAC
    total, by_component, by_branch = count_params(model)
    assert total == sum(p.numel() for p in model.parameters()) == sum(by_component.values()) == sum(by_branch.values())


# ---------------------------------------------------------------------------------- profile()
def test_profile_cache_hit_skips_the_model_and_fingerprint_change_misses(tmp_path, monkeypatch):
    with ProfileCache(tmp_path / "p.sqlite") as cache:
        first = profile(TINY, cache=cache, **FAST)
        assert not first.cached and first.error is None and first.macs > 0 and first.uncounted_ops == {}
        assert first.fingerprint["threads"] == 1 and first.input_size == (64, 64)

        def no_build(config):
            raise AssertionError("a cache hit must not build the model")

        monkeypatch.setattr(model_module, "build_model", no_build)
        again = profile(TINY, cache=cache, **FAST)
        assert again.cached and again.to_dict() == first.to_dict()
        with pytest.raises(AssertionError, match="must not build"):  # 2 threads: another fingerprint, so a miss
            profile(TINY, cache=cache, **{**FAST, "threads": 2})
        with pytest.raises(AssertionError, match="must not build"):  # another input size: a miss
            profile(TINY, cache=cache, input_size=(96, 96), **FAST)


def test_profile_latency_and_no_cache(tmp_path):
    result = profile(TINY, device="cpu", threads=1, cache=None)
    lat = result.latency
    assert lat is not None and lat.n >= 15 and lat.threads == 1
    assert 0 < lat.p10 <= lat.median <= lat.p90
    assert result.to_dict()["latency_ms_median"] == lat.median


def test_isolated_profile_matches_and_failures_become_errors():
    isolated = profile(TINY, isolate=True, cache=None, **FAST)
    assert isolated.error is None and isolated.macs == count_flops(build_model(TINY).eval(), torch.randn(1, 3, 64, 64)).macs
    timed_out = profile(TINY, isolate=True, timeout_s=0.01, cache=None, **FAST)
    assert timed_out.error and "timeout" in timed_out.error and timed_out.macs is None


def test_energy_on_cpu_is_measured_or_explained_never_zero(monkeypatch):
    monkeypatch.setattr("profiling.energy.time.sleep", lambda s: None)
    monkeypatch.setattr("profiling.energy.RAPL_ROOT", __import__("pathlib").Path("/nonexistent"))
    monkeypatch.setattr("profiling.profiler.open_backend", lambda device: __import__("profiling.energy").energy.open_backend(device, rapl_root=__import__("pathlib").Path("/nonexistent")))
    result = profile(TINY, energy=True, cache=None, **FAST)
    assert result.energy is not None and not result.energy.available
    assert "no RAPL package domain" in result.energy.unavailable_reason
    assert result.to_dict()["energy_mj_per_image"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
@pytest.mark.parametrize("kwargs, message", [
    ({"device": "cuda"}, "no CUDA GPU"),
    ({"device": "tpu"}, "not supported|unknown device"),
    ({"device": "cpu", "dtype": "fp16"}, "fp16 is not supported for CPU"),
    ({"device": "cpu", "dtype": "int8"}, "unknown dtype"),
    ({"device": "cpu", "input_size": (64, 0)}, "malformed"),
    ({"device": "cpu", "input_size": (16, 16)}, "window_sizes"),
    ({"device": "cpu", "batch": 0}, "batch"),
    ({"device": "cpu", "threads": 0}, "threads"),
    ({"device": "cpu", "runtime": "cuda-graphs"}, "runtime cuda-graphs needs a CUDA device"),
    ({"device": "cpu", "runtime": "tensorrt"}, "runtime tensorrt needs a CUDA device"),
    ({"device": "cpu", "runtime": "onnxruntime", "dtype": "bf16"}, "fp32 or fp16"),
    ({"device": "cpu", "runtime": "tvm"}, "unknown runtime"),
    ({"device": "cpu", "max_seconds": 0}, "max_seconds"),
])
def test_bad_requests_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        profile(TINY, cache=None, **kwargs)


# ------------------------------------------------------------------------------------ predictor
# the last module's branch-0 depth (1 or 3 blocks at the finest resolution) spreads the members' latency well
# past timing noise; with only 1-block steps on the coarse branches a loaded CI machine ordered them at random
# and the non-negative fit fell to a constant (failed twice in fresh-clone runs)
TINY_SPACE = SearchSpace(TINY.replace(name=None), [[(1,)], [(1,), (1,)], [(1,), (1,), (1, 2)], [(1, 3), (1,), (1, 2), (1, 2)]],
                         [(1,), (1,), (1,), (1, 2)], [(2,), (2,), (2, 4), (2,)])
QUICK = {"warmup_s": 0.05, "trials": 3, "threads": 1}


@pytest.fixture(scope="module")
def tiny_predictor():
    # six calibration models for five coefficients (4 branch scales + intercept)
    return LatencyPredictor.build(TINY_SPACE, "cpu", calibration=6, holdout=3, **QUICK)


def test_predictor_mechanics(tiny_predictor, tmp_path):
    predictor = tiny_predictor
    assert set(predictor.block_ms) == {"0/1/2", "1/1/2", "2/1/2", "2/1/4", "3/1/2", "3/2/2"}
    small, large = TINY_SPACE.smallest(), TINY_SPACE.largest()
    assert predictor.raw_ms(large) > predictor.raw_ms(small) > 0
    assert all(a >= 0 for a in predictor.alphas) and sum(predictor.alphas) > 0 and predictor.beta >= 0
    assert predictor.accuracy is not None and predictor.accuracy.n == 3
    path = tmp_path / "predictor.json"
    predictor.save(path)
    loaded = LatencyPredictor.load(path)
    assert loaded.predict(large) == predictor.predict(large)
    with pytest.raises(PredictorMismatch, match="window 1 and ratio 3"):
        predictor.predict(large.replace(mlp_ratios=(2, 2, 3, 2)))
    with pytest.raises(PredictorMismatch, match="fixed architecture"):
        predictor.predict(large.replace(head=HeadConfig(kind="none")))


def test_predictor_from_another_device_is_refused(tiny_predictor, tmp_path):
    path = tmp_path / "predictor.json"
    data = tiny_predictor.to_dict()
    data["fingerprint"] = {**data["fingerprint"], "name": "NVIDIA H100", "fingerprint_id": "0123456789ab"}
    path.write_text(json.dumps(data))
    with pytest.raises(PredictorMismatch, match="another device.*build-predictor"):
        LatencyPredictor.load(path)
    with pytest.raises(UserError, match="not found"):
        LatencyPredictor.load(tmp_path / "missing.json")


def test_calibration_recovers_per_branch_scales_and_accuracy_metrics():
    rng = np.random.default_rng(0)
    features = rng.uniform(1.0, 10.0, size=(16, 3))
    measured = features @ np.array([0.9, 1.3, 1.1]) + 4.0  # per-branch scales, fixed cost 4 ms
    alphas, beta = fit_branch_scales(features, measured)
    assert alphas == pytest.approx([0.9, 1.3, 1.1], rel=1e-3) and beta == pytest.approx(4.0, rel=1e-3)
    few_alphas, few_beta = fit_branch_scales(features[:3], measured[:3])  # too few models: shrunk to one scale
    assert max(few_alphas) - min(few_alphas) < 0.2 and few_beta >= 0
    accuracy = accuracy_of([1.0, 2.0, 3.0, 4.0], [1.05, 2.5, 2.9, 4.0])
    assert accuracy.within10_pct == 75.0 and accuracy.kendall_tau == pytest.approx(1.0) and accuracy.n == 4


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture()
def tiny_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    TINY.save(path)
    return path


def test_cli_profiles_a_config_to_json_and_caches_it(tiny_file, tmp_path, capsys):
    argv = ["profile", str(tiny_file), "--device", "cpu", "--no-latency", "--threads", "1", "--json", "--cache", str(tmp_path / "c.sqlite")]
    assert run_cli(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["gflops"] == pytest.approx(2 * first["gmacs"]) and first["uncounted_ops"] == {}
    assert first["config_hash"] == TINY.content_hash() and first["latency_ms_median"] is None
    assert run_cli(argv[:-3] + ["--cache", str(tmp_path / "c.sqlite")]) == 0
    table = capsys.readouterr().out
    assert "GMACs" in table and "source" in table and "cache" in table


@pytest.mark.parametrize("extra, message", [
    (["--input", "64xx"], "--input '64xx' is malformed"),
    (["--device", "cpu", "--dtype", "fp16"], "fp16 is not supported"),
    (["--device", "cpu", "--out", "p.json"], "only apply to `hrvit-nas profile build-predictor`"),
    (["--preset", "b1"], "exactly one of CONFIG"),
])
def test_cli_bad_input_exits_2_with_one_message(tiny_file, capsys, extra, message):
    assert run_cli(["profile", str(tiny_file), "--no-cache", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_corrupt_cache_exits_2_and_keeps_the_file(tiny_file, tmp_path, capsys):
    cache = tmp_path / "bad.sqlite"
    cache.write_bytes(b"garbage" * 64)
    assert run_cli(["profile", str(tiny_file), "--device", "cpu", "--no-latency", "--cache", str(cache)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert cache.read_bytes() == b"garbage" * 64


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_cli_cuda_without_gpu_exits_2(capsys):
    assert run_cli(["profile", "--preset", "b1", "--device", "cuda", "--no-cache"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_cli_build_predictor_writes_a_loadable_predictor(tmp_path, capsys):
    space_file, out = tmp_path / "space.yaml", tmp_path / "predictor.json"
    TINY_SPACE.save(space_file)
    argv = ["profile", "build-predictor", "--space", str(space_file), "--device", "cpu", "--threads", "1",
            "--calibration", "3", "--holdout", "0", "--max-seconds", "3", "--out", str(out), "--json"]
    assert run_cli(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and sum(summary["alphas"]) > 0 and summary["runtime"] == "eager"
    assert LatencyPredictor.load(out).predict(TINY_SPACE.largest()) > 0


def test_isolated_profile_with_progress_shares_stderr_and_still_reports_failures(monkeypatch, capfd, tmp_path):
    """``profile --isolate`` shows the child's progress line, so the child writes to this stderr."""
    isolated = profile(TINY, isolate=True, progress=True, cache=None, **FAST)
    assert isolated.error is None and isolated.macs == profile(TINY, cache=None, **FAST).macs
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\necho 'child crashed: out of memory' >&2\nexit 3\n")
    crashing.chmod(0o755)
    monkeypatch.setattr("profiling.profiler.sys.executable", str(crashing))
    broken = profile(TINY, isolate=True, progress=True, cache=None, **FAST)
    assert broken.error and "code 3" in broken.error and "its messages are above" in broken.error
    assert "child crashed: out of memory" in capfd.readouterr().err  # the child's own message reached the terminal
