"""Profiler parts that need no HRViT model: FLOP handles, latency statistics, energy backends through fakes
at the hardware boundary (a fake pynvml module, a fake powercap sysfs tree), fingerprint and cache."""

from __future__ import annotations

import sqlite3
import sys
import time
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hrvit_space.layers import DES, MixCFN
from profiling.cache import (
    CacheCorruptError,
    ProfileCache,
    cache_key,
    default_cache_path,
)
from profiling.counting import count_flops, count_params
from profiling.energy import (
    EnergyMonitor,
    EnergyUnavailable,
    NvmlEnergyCounter,
    NvmlPowerPolling,
    RaplEnergy,
    measure_energy,
    open_backend,
)
from profiling.fingerprint import device_fingerprint, fingerprint_id
from profiling.latency import latency_stats, measure_latency, measure_runs
from profiling.memory import CPU_SOURCE, peak_memory
from profiling.result import EnergyResult, LatencyStats, ProfileResult


def by_top_module(name: str) -> tuple[str, int | None]:
    head = name.split(".")[0]
    return (head or "root", None)


class WindowAttention(nn.Module):
    """Minimal SDPA attention over (B, N, C) tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c)) + x


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path_factory, monkeypatch):
    """The interference baseline lives next to the default cache: keep it out of $HOME."""
    monkeypatch.setenv("HRVIT_NAS_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hrvit-cache"))


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- FLOPs
def test_attention_macs_are_counted_by_hand_including_sdpa():
    b, n, c, heads = 2, 16, 32, 4
    report = count_flops(WindowAttention(c, heads).eval(), torch.randn(b, n, c), component_of=by_top_module)
    linear = b * n * c * 3 * c + b * n * c * c
    attention = b * heads * n * n * (c // heads) * 2  # Q.K^T and A.V
    assert report.by_operator["attention_matmul"] == attention
    assert report.macs == linear + attention
    assert report.flops == 2 * report.macs
    assert report.by_operator["attention_softmax"] == b * heads * n * n
    assert report.uncounted == {}
    assert report.macs_by_component == {"qkv": b * n * c * 3 * c, "proj": b * n * c * c, "root": attention}


class PaperMixCFN(nn.Module):
    """MixCFN as the paper draws it: Linear, depthwise 3x3 | 5x5 on the two halves, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.conv3 = nn.Conv2d(hidden // 2, hidden // 2, 3, padding=1, groups=hidden // 2)
        self.conv5 = nn.Conv2d(hidden // 2, hidden // 2, 5, padding=2, groups=hidden // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h3, h5 = self.fc1(x).permute(0, 3, 1, 2).chunk(2, dim=1)
        h = torch.cat([self.conv3(h3), self.conv5(h5)], dim=1)
        return self.fc2(F.gelu(h).permute(0, 2, 3, 1))


def test_mixcfn_macs_by_hand():
    b, h, w, c, hidden = 1, 8, 8, 16, 64
    report = count_flops(PaperMixCFN(c, hidden).eval(), torch.randn(b, h, w, c), component_of=by_top_module)
    tokens = b * h * w
    assert report.macs == tokens * c * hidden * 2 + tokens * (hidden // 2) * (9 + 25)
    assert report.macs_by_component == {"fc1": tokens * c * hidden, "fc2": tokens * c * hidden,
                                        "conv3": tokens * hidden // 2 * 9, "conv5": tokens * hidden // 2 * 25}
    assert report.by_operator["gelu"] == tokens * hidden
    assert report.uncounted == {}


def test_broadcast_matmul_counts_every_batch():
    """fvcore's own matmul handle drops the batch of a broadcast operand; DES relies on that pattern."""
    tokens, dim = 50, 64
    des = DES(dim).eval()
    report = count_flops(des, torch.randn(tokens, dim), component_of=by_top_module)
    k, p = des.k, des.p
    assert report.macs == tokens * (k * p * p + k * k * p)


def test_fusion_style_ops_are_counted_not_dropped():
    class Fuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.up = nn.Conv2d(16, 8, 1)
            self.norm = nn.BatchNorm2d(16)

        def forward(self, high: torch.Tensor, low: torch.Tensor):
            up = F.interpolate(self.up(low), size=high.shape[-2:], mode="bilinear", align_corners=False)
            padded = F.pad(high, (0, 1, 0, 1))[..., :-1, :-1]
            return F.hardswish(padded + up), self.norm(self.down(high)) * 0.5 + low

    high, low = torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8)
    report = count_flops(Fuse().eval(), (high, low), component_of=by_top_module)
    assert report.macs == 8 * 8 * 16 * 8 + 8 * 8 * 16 * 8 * 9  # 1x1 conv on low + 3x3 stride-2 conv on high
    assert report.uncounted == {}
    assert report.by_operator["hardswish"] == 8 * 16 * 16
    assert report.by_operator["upsample_bilinear2d"] == 4 * 8 * 16 * 16


def test_macs_agree_with_torch_flop_counter_under_math_sdpa():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = nn.Sequential(WindowAttention(32, 2), MixCFNTokens()).eval()
    x = torch.randn(1, 64, 32)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    assert counter.get_total_flops() // 2 == count_flops(model, x, component_of=by_top_module).macs


class MixCFNTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cfn = MixCFN(32, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cfn(x.view(1, 8, 8, 32)).view(1, 64, 32)


def test_unknown_op_is_listed_as_uncounted():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 0)

    report = count_flops(Odd(), torch.randn(4, 4), component_of=by_top_module)
    assert report.uncounted == {"aten::cumsum": 1}


def test_params_by_component_sum_to_total():
    model = nn.Sequential(nn.Linear(4, 8), nn.Conv2d(3, 5, 3))
    total, by_component, by_branch = count_params(model, component_of=lambda name: (f"c{name}", int(name) if name else None))
    assert total == 4 * 8 + 8 + 3 * 5 * 9 + 5
    assert by_component == {"c0": 40, "c1": 140}
    assert by_branch == {"0": 40, "1": 140}


# ----------------------------------------------------------------------------------------- latency
def test_latency_stats_quantiles_and_stability():
    samples = [10.0, 11.0, 9.0, 10.5, 9.5, 10.0, 10.2, 9.8, 10.1, 9.9]
    stats = latency_stats(samples, threads=2)
    assert stats.median == pytest.approx(10.0)
    assert stats.p10 == pytest.approx(9.45)
    assert stats.p90 == pytest.approx(10.55)
    assert stats.iqr == pytest.approx(10.175 - 9.825)
    assert stats.n == 10 and stats.threads == 2
    assert stats.cv == pytest.approx(0.05375, abs=1e-4)
    # median known to sqrt(pi/2) x cv / sqrt(n) = 2.1%: just over the 2% a stable result needs
    assert not stats.stable
    assert latency_stats(samples + samples).stable  # twice the trials: 1.5%


def test_latency_stats_round_trip_through_dict():
    stats = latency_stats([1.0, 2.0, 3.0], calls_per_trial=4)
    assert LatencyStats.from_dict(stats.to_dict()) == stats


def test_measure_latency_records_threads_and_restores_them():
    before = torch.get_num_threads()
    stats = measure_latency(nn.Linear(8, 8), torch.randn(4, 8), "cpu", warmup_s=0.01, trials=4, max_trials=4, trial_s=0.002, threads=1)
    assert stats.threads == 1 and stats.n == 4
    assert torch.get_num_threads() == before
    assert 0 < stats.p10 <= stats.median <= stats.p90


def test_measure_runs_interleaves_and_ranks_candidates():
    def busy(n: int):
        return lambda: sum(range(n))

    stats = measure_runs({"small": busy(2000), "large": busy(40000)}, torch.device("cpu"), warmup_s=0.01, trials=5, max_trials=5, trial_s=0.005)
    assert stats["small"].median * 5 < stats["large"].median


def test_cpu_peak_memory_sees_a_transient_allocation_in_a_long_lived_process():
    def run():
        block = torch.ones(16 * 2**20)  # 64 MiB, freed before returning
        return float(block[0])

    for _ in range(3):  # pages freed by earlier calls stay resident: RSS growth read 0.0 MiB here
        peak = peak_memory(run, torch.device("cpu"))
    assert peak.source == CPU_SOURCE and 64 * 2**20 <= peak.bytes <= 70 * 2**20


# ------------------------------------------------------------------------------------------ energy
class FakeNVMLError(Exception):
    pass


def fake_pynvml(energy_mj=None, power_mw=None, init_error=None) -> types.ModuleType:
    """The hardware boundary: a stand-in for nvidia-ml-py with scripted readings."""
    module = types.ModuleType("pynvml")
    module.NVMLError = FakeNVMLError
    module.NVML_CLOCK_SM, module.NVML_CLOCK_MEM, module.NVML_TEMPERATURE_GPU = 1, 2, 0

    def init():
        if init_error:
            raise FakeNVMLError(init_error)

    def reading(value):
        def read(handle):
            if value is None:
                raise FakeNVMLError("Not Supported")
            return value() if callable(value) else value
        return read

    module.nvmlInit = init
    module.nvmlDeviceGetHandleByIndex = lambda index: f"gpu{index}"
    module.nvmlDeviceGetHandleByUUID = lambda uuid: "gpu0"
    module.nvmlDeviceGetTotalEnergyConsumption = reading(energy_mj)
    module.nvmlDeviceGetPowerUsage = reading(power_mw)
    return module


def test_nvml_energy_counter_window_difference(monkeypatch):
    readings = iter([1000, 1000, 6000])
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy_mj=lambda: next(readings)))
    backend = open_backend(torch.device("cuda", 0))
    assert isinstance(backend, NvmlEnergyCounter)
    clock = iter([0.0, 5.0])
    monitor = EnergyMonitor(backend, clock=lambda: next(clock))
    monitor.begin_window("run")
    window = monitor.end_window("run")
    assert window.mj == 5000 and window.seconds == 5.0 and window.watts == pytest.approx(1.0)


def test_nvml_falls_back_to_power_polling_when_counter_unsupported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy_mj=None, power_mw=250_000))
    backend = open_backend(torch.device("cuda", 0))
    try:
        assert isinstance(backend, NvmlPowerPolling)
        first = backend.energy_mj()
        time.sleep(0.1)
        second = backend.energy_mj()
        assert second - first == pytest.approx(250 * 0.1 * 1e3, rel=0.5)  # 250 W x ~0.1 s in mJ
    finally:
        backend.close()


def test_power_polling_integrates_trapezoid_with_fake_clock():
    now = [0.0]
    power = iter([100_000, 100_000, 300_000, 300_000] + [300_000] * 100)
    module = fake_pynvml(power_mw=lambda: next(power))
    backend = NvmlPowerPolling(module, "gpu0", interval_s=3600, clock=lambda: now[0])
    try:
        now[0] = 1.0
        assert backend.energy_mj() == pytest.approx(100 * 1e3)  # 100 W for 1 s
        now[0] = 2.0
        assert backend.energy_mj() == pytest.approx(100e3 + 200e3)  # ramp 100 -> 300 W: mean 200 W
    finally:
        backend.close()


@pytest.mark.parametrize("energy, power, init_error, reason", [
    (None, None, None, "both unavailable"),
    (1, 1, "Driver Not Loaded", "NVML cannot start"),
])
def test_nvml_unavailable_is_a_reason_never_zero(monkeypatch, energy, power, init_error, reason):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy, power, init_error))
    with pytest.raises(EnergyUnavailable, match=reason):
        open_backend(torch.device("cuda", 0))


def test_missing_pynvml_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(EnergyUnavailable, match="not installed"):
        open_backend(torch.device("cuda", 0))


def make_rapl(tmp_path, packages):
    for index, (energy, max_range) in enumerate(packages):
        domain = tmp_path / f"intel-rapl:{index}"
        domain.mkdir()
        (domain / "energy_uj").write_text(f"{energy}\n")
        (domain / "max_energy_range_uj").write_text(f"{max_range}\n")
        sub = tmp_path / f"intel-rapl:{index}:0"  # core sub-domain: must not be double counted
        sub.mkdir()
        (sub / "energy_uj").write_text("123456789\n")
        (sub / "max_energy_range_uj").write_text(f"{max_range}\n")
    return tmp_path


def test_rapl_sums_packages_and_handles_wrap_around(tmp_path):
    root = make_rapl(tmp_path, [(900_000, 1_000_000), (5_000, 1_000_000)])
    backend = open_backend(torch.device("cpu"), rapl_root=root)
    assert isinstance(backend, RaplEnergy)
    start = backend.energy_mj()
    (root / "intel-rapl:0" / "energy_uj").write_text("100000\n")  # wrapped: +200_000 uJ
    (root / "intel-rapl:1" / "energy_uj").write_text("55000\n")  # +50_000 uJ
    assert backend.energy_mj() - start == pytest.approx(250.0)  # mJ


def test_rapl_root_only_permission_gives_reason(tmp_path, monkeypatch):
    root = make_rapl(tmp_path, [(1, 10)])
    original = type(root).read_text

    def read_text(path, *args, **kwargs):
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(type(root), "read_text", read_text)
    with pytest.raises(EnergyUnavailable, match="root only"):
        open_backend(torch.device("cpu"), rapl_root=root)


def test_no_rapl_tree_gives_reason(tmp_path):
    with pytest.raises(EnergyUnavailable, match="no RAPL package domain"):
        open_backend(torch.device("cpu"), rapl_root=tmp_path)


def test_measure_energy_reports_gross_idle_and_net(tmp_path, monkeypatch):
    """A fake counter that rises 10 mJ per inference call on top of 2 W idle."""
    monkeypatch.setattr("profiling.energy.time.sleep", lambda s: None)
    state = {"mj": 0.0, "t": 0.0}

    class Counter:
        name = "fake-counter"

        def energy_mj(self):
            return state["mj"]

        def close(self):
            pass

    def advance(seconds, mj):
        state["t"] += seconds
        state["mj"] += mj

    monitor = EnergyMonitor(Counter(), clock=lambda: state["t"])
    monkeypatch.setattr(monitor, "idle_w", lambda seconds: 2.0)
    monkeypatch.setattr("profiling.energy.time.monotonic", lambda: state["t"])

    def run():
        advance(0.01, 10.0 + 2.0 * 0.01 * 1e3)  # 10 mJ of work plus 2 W idle for 10 ms

    result = measure_energy(run, images_per_call=2, device=torch.device("cpu"), monitor=monitor, window_s=1.0)
    assert result.mj_per_image == pytest.approx((10 + 20) / 2)
    assert result.net_mj_per_image == pytest.approx(10 / 2)
    assert result.idle_w == 2.0 and result.backend == "fake-counter" and result.window_s >= 1.0


def test_energy_result_without_backend_says_unavailable():
    result = EnergyResult(unavailable_reason="no RAPL")
    assert not result.available and result.describe() == "unavailable (no RAPL)"
    assert result.to_dict()["energy_mj_per_image"] is None
    assert EnergyResult.from_dict(result.to_dict()) == result


# ------------------------------------------------------------------------------------- fingerprint
def test_cpu_fingerprint_records_threads_and_is_stable():
    first = device_fingerprint("cpu", threads=2)
    assert first["kind"] == "cpu" and first["threads"] == 2 and first["torch"] == torch.__version__
    assert first["cpu_model"] and first["cpu_logical_cores"] >= 1
    assert device_fingerprint("cpu", threads=2)["fingerprint_id"] == first["fingerprint_id"]
    assert device_fingerprint("cpu", threads=1)["fingerprint_id"] != first["fingerprint_id"]
    assert len(first["fingerprint_id"]) == 12


def test_gpu_fingerprint_fields_come_from_nvml_and_missing_ones_are_none(monkeypatch):
    from profiling.fingerprint import _nvml_fields

    module = fake_pynvml(energy_mj=1)
    module.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    module.nvmlDeviceGetUUID = lambda handle: "GPU-1234"
    module.nvmlDeviceGetEnforcedPowerLimit = lambda handle: 700_000  # mW
    module.nvmlDeviceGetMigMode = lambda handle: [0, 0]
    module.nvmlDeviceGetTemperature = lambda handle, sensor: 45
    monkeypatch.setitem(sys.modules, "pynvml", module)
    fields = _nvml_fields(torch.device("cuda", 0))
    assert fields["driver"] == "550.54.15" and fields["uuid"] == "GPU-1234"
    assert fields["power_limit_w"] == 700.0 and fields["mig_mode"] == 0 and fields["temperature_c"] == 45
    assert fields["sm_clock_mhz"] is None and fields["persistence_mode"] is None  # not reported by this "GPU"
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_error="Driver Not Loaded"))
    assert "unavailable" in _nvml_fields(torch.device("cuda", 0))["nvml"]


def test_fingerprint_id_ignores_volatile_readings():
    base = {"kind": "cuda", "name": "H100", "driver": "550.1", "temperature_c": 40, "sm_clock_mhz": 1980}
    hotter = {**base, "temperature_c": 70, "sm_clock_mhz": 1500}
    assert fingerprint_id(base) == fingerprint_id(hotter)
    assert fingerprint_id(base) != fingerprint_id({**base, "driver": "555.2"})


# ------------------------------------------------------------------------------------------- cache
def sample_result(**changes) -> ProfileResult:
    result = ProfileResult(
        config_hash="abc", params=1234, macs=10**9, latency=latency_stats([1.0, 1.1, 0.9]),
        energy=EnergyResult(unavailable_reason="none here"), fingerprint={"fingerprint_id": "f1"}, input_size=(64, 64),
    )
    return ProfileResult(**{**result.__dict__, **changes})


def test_profile_result_dict_round_trip_and_units():
    result = sample_result()
    data = result.to_dict()
    assert data["gmacs"] == 1.0 and data["gflops"] == 2.0 and data["params_m"] == 0.001234
    assert data["latency_ms_median"] == pytest.approx(1.0) and data["energy_mj_per_image"] is None
    assert ProfileResult.from_dict(data) == result


def test_cache_hit_miss_and_fingerprint_invalidation(tmp_path):
    key = cache_key("abc", (64, 64), 1, "fp32", {"latency": True}, "f1")
    with ProfileCache(tmp_path / "c.sqlite") as cache:
        assert cache.get(key) is None
        cache.put(key, sample_result())
        assert cache.get(key) == sample_result()
        other_device = cache_key("abc", (64, 64), 1, "fp32", {"latency": True}, "f2")
        assert cache.get(other_device) is None
        assert cache.get(cache_key("abc", (64, 64), 2, "fp32", {"latency": True}, "f1")) is None
    with ProfileCache(tmp_path / "c.sqlite") as reopened:  # persisted
        assert reopened.get(key) == sample_result() and len(reopened) == 1


def test_corrupt_cache_file_is_reported_and_left_untouched(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CacheCorruptError, match="corrupt.*--no-cache"):
        ProfileCache(path)
    assert path.read_bytes() == b"this is not sqlite" * 100


def test_tampered_cache_entry_is_not_trusted(tmp_path):
    path = tmp_path / "c.sqlite"
    with ProfileCache(path) as cache:
        cache.put("k", sample_result())
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE profiles SET result_json = replace(result_json, '1234', '9999')")
    with ProfileCache(path) as cache, pytest.raises(CacheCorruptError, match="checksum"):
        cache.get("k")


def test_foreign_sqlite_file_is_not_used(tmp_path):
    path = tmp_path / "c.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE studies (id INTEGER)")
    with pytest.raises(CacheCorruptError, match="not a profile cache"):
        ProfileCache(path)


def test_default_cache_path_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HRVIT_NAS_CACHE_DIR", str(tmp_path))
    assert default_cache_path() == tmp_path / "profiles.sqlite"
    monkeypatch.delenv("HRVIT_NAS_CACHE_DIR")
    assert default_cache_path().parts[-3:] == (".cache", "hrvit-nas", "profiles.sqlite")
