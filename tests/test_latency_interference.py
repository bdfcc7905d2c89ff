"""Contention-proof CPU timing: a real CPU hog is detected, flagged, never cached; threads are deliberate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from hrvit_nas.cli import main as run_cli
from profiling import ProfileCache, ReferenceBaseline, default_threads, measure_runs, profile
from profiling.cli import format_result
from profiling.latency import THREADS_ENV
from test_profiling import TINY

QUICK = {"warmup_s": 0.05, "trials": 5, "max_trials": 5, "trial_s": 0.05}
HOG_SECONDS = 90  # hard bound: each hog exits by itself even if the test is killed (teardown kills them sooner)


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HRVIT_NAS_CACHE_DIR", str(tmp_path / "cache"))


def cores() -> int:
    return len(os.sched_getaffinity(0))


@pytest.fixture()
def cpu_hogs():
    """Busy-loop processes on our cores, two per core (2x oversubscribed), bounded in time."""
    hogs: list[subprocess.Popen] = []

    def start() -> None:
        code = f"import time\nend = time.time() + {HOG_SECONDS}\nwhile time.time() < end: pass\n"
        hogs.extend(subprocess.Popen([sys.executable, "-c", code]) for _ in range(2 * cores()))
        time.sleep(0.5)  # let the scheduler spread them

    yield start
    for hog in hogs:
        hog.kill()
        hog.wait()


def small_runs() -> dict:
    layer, x = nn.Linear(128, 128).eval(), torch.randn(64, 128)
    return {"model": lambda: layer(x)}


def test_real_cpu_hog_is_flagged_remeasured_and_not_cached(cpu_hogs, tmp_path):
    threads = 1  # 2 hogs per core: our one thread gets ~40% of a core, in every 50 ms trial
    before = profile(TINY, device="cpu", threads=threads, cache=None, max_seconds=2)  # learns the reference baseline
    assert before.latency.interference is not None and before.latency.load_avg_1m is not None
    cpu_hogs()
    loaded = measure_runs(small_runs(), torch.device("cpu"), threads=threads, attempts=2, backoff_s=0.05, **QUICK)["model"]
    assert loaded.contended and loaded.attempts == 2  # re-measured once, still contended
    assert loaded.cpu_wait_pct > 5  # the kernel saw our thread wait for a core (the exact signal; the reference may slip)
    with ProfileCache(tmp_path / "profiles.sqlite") as cache:
        result = profile(TINY, device="cpu", threads=threads, cache=cache, max_seconds=2)
        assert result.contended and result.to_dict()["latency_contended"] is True
        assert len(cache) == 0  # a contended measurement is never stored as a good result
        assert "CONTENDED" in format_result(result)


def test_the_reference_baseline_keeps_the_fastest_reading(tmp_path):
    path = tmp_path / "baseline.json"
    stats = measure_runs(small_runs(), torch.device("cpu"), threads=1, baseline=ReferenceBaseline(path), attempts=1, **QUICK)["model"]
    assert stats.interference == pytest.approx(1.0, rel=0.5)  # the first run is its own baseline (trimmed mean / median)
    (key, first), = json.loads(path.read_text()).items()
    baseline = ReferenceBaseline(path)
    assert baseline.observe(key, first * 3) == first  # a slower reading never raises the baseline
    assert baseline.observe(key, first / 2) == first / 2  # a faster one lowers it
    path.write_text("not json")
    assert ReferenceBaseline(path).observe(key, 5.0) == 5.0  # a damaged file is re-learned, never fatal


def test_max_seconds_bounds_one_measurement():
    measure_runs(small_runs(), torch.device("cpu"), threads=1, attempts=1, **QUICK)  # first use: imports, oneDNN set-up
    start = time.perf_counter()
    stats = measure_runs({"slow": lambda: time.sleep(0.05)}, torch.device("cpu"), threads=1, warmup_s=0.05, trials=40,
                         max_trials=40, trial_s=0.05, max_seconds=0.5, backoff_s=5.0)["slow"]
    # unbounded, its 40 rounds (50 ms trial + reference trial) would take > 4 s; bounded, 0.5 s plus the last
    # trials and the statistics (~1 s at a load of 10 on 2 cores); no back-off beyond the bound either
    assert time.perf_counter() - start < 2.5 and 2 <= stats.n < 40


def test_thread_count_is_deliberate(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert default_threads() == cores()
    monkeypatch.setenv(THREADS_ENV, "3")
    assert default_threads() == 3
    result = profile(TINY, device="cpu", measure_latency=False, cache=None)
    assert result.fingerprint["threads"] == 3


@pytest.mark.parametrize("command", [["search", "--study", "s"], ["demo"], ["profile", "--preset", "b1"]])
def test_threads_option_refuses_nonsense(command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli([*command, "--threads", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "threads 0 is invalid" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written
