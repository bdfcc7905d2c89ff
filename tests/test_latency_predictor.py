"""Latency predictor: stratified held-out configs, noise floor beside the accuracy, one predictor per
(device, runtime, dtype, input, batch), `profile predict`, and the CLI's clean errors."""

from __future__ import annotations

import json
import random
import statistics

import pytest
import torch

from hrvit_nas.cli import main as run_cli
from hrvit_nas.errors import UserError
from hrvit_space.space import SearchSpace
from profiling import LatencyPredictor, PredictorMismatch, profile
from profiling import analytic_counts
from profiling.predictor import BRANCH_SCALES, COUNTS, _block_key, _structure, _stratified, noise_ceiling, paired_ratios
from test_profiling import TINY as TINY_NAMED

TINY = TINY_NAMED.replace(name=None)  # a space's base carries no name
SPACE = SearchSpace(TINY, [[(1,)], [(1,), (1, 2)], [(1,), (1, 2), (1, 2)], [(1,), (1,), (1, 2), (1, 2)]],
                    [(1,), (1,), (1,), (1, 2)], [(2,), (2,), (2, 4), (2,)])
QUICK = {"warmup_s": 0.05, "trials": 3, "threads": 1, "max_seconds": 5}


@pytest.fixture(autouse=True)
def private_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HRVIT_NAS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    import os

    os.environ["HRVIT_NAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))  # module scope: no monkeypatch
    return LatencyPredictor.build(SPACE, "cpu", calibration=4, holdout=4, **QUICK)


def blocks(config) -> int:
    return sum(sum(module) for module in config.depths)


def test_stratified_configs_span_the_latency_range_extremes_included():
    chosen = _stratified(SPACE, blocks, 6, random.Random(0))
    assert len({c.content_hash() for c in chosen}) == 6
    assert blocks(chosen[0]) == blocks(SPACE.smallest()) and blocks(chosen[-1]) == blocks(SPACE.largest())
    assert [blocks(c) for c in chosen] == sorted(blocks(c) for c in chosen)


def test_predictor_reports_accuracy_beside_its_noise_floor(predictor):
    accuracy = predictor.accuracy
    assert accuracy.n == 4 and accuracy.noise_floor_pct is not None and accuracy.anchor_cv_pct is not None
    assert "noise floor" in accuracy.describe()
    assert len(predictor.alphas) == TINY.num_branches and predictor.runtime == "eager"
    assert predictor.runtime_version.startswith("torch ")
    measured = [m for _, _, m in accuracy.rows]
    assert max(measured) > min(measured) > 0


def test_perfect_predictor_ceiling_follows_the_noise_floor(predictor):
    measured = [80.0 + 3.5 * i for i in range(20)]  # the 78-149 ms span of a b1 space at 224
    assert noise_ceiling(measured, 0.0) == (100.0, 1.0)
    within, tau = noise_ceiling(measured, 5.5)  # the idle 2-core VM's floor: the goals were out of reach
    assert 88 < within < 96 and tau < 0.9
    assert noise_ceiling(measured, 1.5)[0] > 99
    accuracy = predictor.accuracy  # the build prints it beside its own accuracy
    assert accuracy.ceiling_within10_pct is not None and "a perfect predictor would score" in accuracy.describe()


def test_paired_ratios_cancel_load_changes_between_rounds():
    load = [1.0, 1.6, 1.1, 1.5, 1.3, 1.9, 1.2]  # each round's slowdown, shared by the anchor and the run
    own = [0.04, -0.04, 0.0, 0.04, -0.04, 0.02, -0.02]  # the run's own trial noise
    anchor = [2.0 * d for d in load]
    run = [6.0 * d * (1 + e) for d, e in zip(load, own)]
    ratio = statistics.median(paired_ratios(run, anchor))
    assert ratio == pytest.approx(3.0, rel=0.005)
    assert abs(statistics.median(run) / statistics.median(anchor) - 3.0) > 0.1  # ratio of medians: 4% off
    assert len(paired_ratios(run[:4], anchor)) == 4  # a run that left the rounds early pairs with its own rounds


def table_predictor() -> LatencyPredictor:
    """A predictor with a block table in which a ratio-4 MixCFN costs 3x a ratio-2 one (no GMAC count says so)."""
    table = {_block_key(b, w, r): (1.0 + b) * (3.0 if r == 4 else 1.0) * w
             for b in range(TINY.num_branches) for w in SPACE.window_choices[b] for r in SPACE.ratio_choices[b]}
    return LatencyPredictor(device="cpu", fingerprint={}, structure=_structure(TINY, TINY.input_size), batch=1, dtype="fp32",
                            block_ms=table)


@pytest.mark.parametrize("truth", [BRANCH_SCALES, COUNTS])
def test_build_keeps_the_model_that_predicts_its_calibration_models(truth, tmp_path):
    configs = [SPACE.sample(seed) for seed in range(16)]
    made = table_predictor()

    def latency(config) -> float:
        if truth == BRANCH_SCALES:
            return 5.0 + 0.9 * made.raw_ms(config)
        blocks = config.blocks_per_branch
        return 10.0 + sum((1.5 + b) * n for b, n in enumerate(blocks)) + 2e3 * analytic_counts(config).macs / 1e9

    calibrate, held_out = configs[:10], configs[10:]
    made.choose_model(calibrate, [latency(c) for c in calibrate], held_out, [latency(c) for c in held_out])
    assert made.model == truth and set(made.candidates) == {BRANCH_SCALES, COUNTS}
    assert made.candidates[truth]["loo_error_pct"] < 0.5 < made.candidates[({BRANCH_SCALES, COUNTS} - {truth}).pop()]["loo_error_pct"]
    assert [made.predict(c) for c in held_out] == pytest.approx([latency(c) for c in held_out], rel=0.01)
    made.save(tmp_path / "p.json")  # the file answers with the chosen model
    loaded = LatencyPredictor.load(tmp_path / "p.json", check_device=False)
    assert loaded.model == truth and [loaded.predict(c) for c in held_out] == [made.predict(c) for c in held_out]


def test_counts_model_needs_enough_calibration_models():
    made = table_predictor()
    few = [SPACE.sample(seed) for seed in range(4)]
    made.choose_model(few, [10.0 + made.raw_ms(c) for c in few])
    assert made.model == BRANCH_SCALES and set(made.candidates) == {BRANCH_SCALES}  # 6 coefficients from 3 models: not tried


def test_one_predictor_answers_for_one_runtime_dtype_batch_and_input(predictor):
    predictor.check(runtime="eager", dtype="fp32", batch=1, input_size=(64, 64))
    for wrong, message in [({"runtime": "onnxruntime"}, "runtime eager"), ({"dtype": "bf16"}, "dtype fp32"),
                           ({"batch": 4}, "batch 1"), ({"input_size": (96, 96)}, "input")]:
        with pytest.raises(PredictorMismatch, match=message):
            predictor.check(**{"runtime": "eager", "dtype": "fp32", "batch": 1, **wrong})


def test_profile_predict_answers_from_the_predictor_file_without_timing(predictor, tmp_path, capsys, monkeypatch):
    path, config_file = tmp_path / "predictor.json", tmp_path / "config.yaml"
    predictor.save(path)
    config = SPACE.largest()
    config.save(config_file)
    monkeypatch.setattr("profiling.latency.measure_runs", lambda *a, **k: pytest.fail("predict must not time anything"))
    assert run_cli(["profile", "predict", str(config_file), "--predictor", str(path), "--device", "cpu", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["latency_ms"] == pytest.approx(predictor.predict(config)) and answer["latency_source"] == "predictor"
    assert run_cli(["profile", "predict", "--preset", "b1", "--predictor", str(path), "--device", "cpu"]) == 2
    assert "fixed architecture" in capsys.readouterr().err  # a preset outside the predictor's space: refused, not guessed
    assert run_cli(["profile", "predict", str(config_file), "--predictor", str(path), "--device", "cpu", "--batch", "2"]) == 2
    assert "batch 1 (asked: 2)" in capsys.readouterr().err
    stale = json.loads(path.read_text())
    stale["runtime_version"] = "torch 0.1"
    path.write_text(json.dumps(stale))
    assert run_cli(["profile", "predict", str(config_file), "--predictor", str(path), "--device", "cpu"]) == 2
    assert "rebuild it here" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--calibration", "0"], "calibration 0 is invalid"),
    (["--calibration", "2"], "calibration 2 is invalid"),
    (["--holdout", "-1"], "holdout -1 is invalid"),
    (["--trials", "1"], "trials 1 is invalid; give an integer >= 2 (timed rounds per measurement)"),
])
def test_build_predictor_bad_counts_are_clean_errors(extra, message, tmp_path, capsys):
    space_file = tmp_path / "space.yaml"
    SPACE.save(space_file)
    argv = ["profile", "build-predictor", "--space", str(space_file), "--device", "cpu", "--out", str(tmp_path / "p.json"), *extra]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "p.json").exists()


def test_huge_input_is_refused_before_allocating(capsys):
    assert run_cli(["profile", "--preset", "b1", "--input", "100000x100000", "--device", "cpu", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "needs at least" in err and "GiB" in err and "available" in err and "Traceback" not in err


def test_profile_result_exposes_unit_bearing_names_and_cpu_peak_memory():
    result = profile(TINY, device="cpu", threads=1, cache=None, max_seconds=2)
    assert result.params_m == pytest.approx(result.params / 1e6) and result.gmacs == pytest.approx(result.macs / 1e9)
    assert result.latency_ms == result.latency.median
    weights = sum(p.numel() * 4 for p in __import__("hrvit_space.model", fromlist=["x"]).build_model(TINY).parameters())
    assert result.peak_memory_bytes > weights  # weights plus live activations, not the old 0.0 MiB
    from profiling.cli import format_result

    assert "peak memory" in format_result(result) and "0.0 MiB" not in format_result(result)
    with pytest.raises(UserError, match="threads"):
        profile(TINY, device="cpu", threads=0, cache=None)
    assert torch.get_num_threads() >= 1
