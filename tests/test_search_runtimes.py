"""Search on a deployment runtime: runtime and dtype are study settings that reach the profiler and pin a
resume, a latency predictor must match them, and a contended latency is flagged in records, tables and plots."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import settled_bytes
from test_latency_predictor import QUICK, SPACE
from test_search import _one_thread_shared_cache, run_cli, space_file, sqlite_url, tiny_settings  # noqa: F401  (fixtures)

from hrvit_nas.errors import UserError


def test_runtime_and_dtype_are_stored_and_a_resume_on_another_runtime_is_refused(tmp_path, space_file, capsys):
    base = ["search", "--study", "rt", "--run-dir", str(tmp_path), "--space", str(space_file), "--device", "cpu",
            "--objectives", "params,flops", "--no-progress", "--trials", "1"]
    code, out = run_cli([*base, "--runtime", "compile", "--dtype", "bf16"], capsys)
    assert code == 0, out.err
    from search import open_study

    db = tmp_path / "study.db"
    settings = open_study("rt", f"sqlite:///{db}").user_attrs["settings"]
    assert (settings["runtime"], settings["dtype"]) == ("compile", "bf16")
    before = settled_bytes(db)
    code, out = run_cli([*base, "--dtype", "bf16"], capsys)  # eager: budgets and latencies would mean another thing
    assert code == 2 and "created with other settings" in out.err and "runtime: stored 'compile', now 'eager'" in out.err
    code, out = run_cli([*base, "--runtime", "compile"], capsys)
    assert code == 2 and "dtype: stored 'bf16', now 'fp32'" in out.err
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--runtime", "tvm"], "unknown runtime 'tvm'"),
        (["--runtime", "tensorrt"], "needs a CUDA device"),
        (["--dtype", "fp16"], "fp16 is not supported for CPU profiling"),
    ],
)
def test_a_runtime_this_device_cannot_run_is_refused_before_the_study_exists(tmp_path, space_file, capsys, extra, message):
    argv = ["search", "--study", "bad", "--run-dir", str(tmp_path), "--space", str(space_file), "--device", "cpu",
            "--objectives", "params,latency", "--no-progress", *extra]
    code, out = run_cli(argv, capsys)
    assert code == 2 and out.err.startswith("error: ") and message in out.err, out.err
    assert _study_names(tmp_path / "study.db") == []


def _study_names(db) -> list[str]:
    import optuna

    return optuna.get_all_study_names(f"sqlite:///{db}") if db.exists() else []


def test_latency_is_timed_on_the_study_runtime(tmp_path, monkeypatch):
    """The real profiler runs (ONNX Runtime, CPU execution provider); the spy only records what it was asked."""
    import profiling
    from search import run_search

    results = []

    def recording_profile(request, **options):
        results.append((request, real_profile(request, **options)))
        return results[-1][1]

    real_profile = profiling.profile
    monkeypatch.setattr(profiling, "profile", recording_profile)
    study = run_search(tiny_settings(objectives="latency,params", runtime="onnxruntime"), "ort", sqlite_url(tmp_path), 1)
    (request, result), = results
    assert (request.runtime, request.dtype) == ("onnxruntime", "fp32")
    assert result.options["runtime"] == "onnxruntime" and result.runtime_max_abs_diff is not None
    measurements = study.trials[0].user_attrs["measurements"]
    assert measurements["latency_ms"] == result.latency.median
    assert measurements["latency_contended"] is result.latency.contended


def _predictor_file(tmp_path) -> str:
    from profiling import LatencyPredictor

    path = tmp_path / "predictor.json"
    LatencyPredictor.build(SPACE, "cpu", calibration=4, holdout=4, **QUICK).save(path)
    return str(path)


def test_a_latency_predictor_for_another_batch_runtime_or_input_is_refused(tmp_path, capsys):
    from search import SearchSettings, run_search

    predictor = _predictor_file(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE.to_dict()))
    base = ["search", "--study", "p", "--run-dir", str(tmp_path / "run"), "--space", str(space), "--device", "cpu",
            "--objectives", "latency,params", "--latency-predictor", predictor, "--no-progress", "--trials", "1"]
    code, out = run_cli([*base, "--batch", "2"], capsys)
    assert code == 2 and "latency predictor was built for batch 1 (asked: 2)" in out.err, out.err
    assert "Traceback" not in out.err and _study_names(tmp_path / "run" / "study.db") == []
    code, out = run_cli([*base, "--runtime", "onnxruntime"], capsys)
    assert code == 2 and "runtime eager (asked: onnxruntime)" in out.err
    height, width = SPACE.base.input_size
    with pytest.raises(UserError, match="latency predictor was built for input"):
        run_search(SearchSettings(space=SPACE, objectives="latency,params", latency_predictor=predictor, device="cpu",
                                  input_size=(2 * height, 2 * width)), "p", sqlite_url(tmp_path), 1)
    code, out = run_cli(base, capsys)  # the matching study runs
    assert code == 0, out.err


def test_a_contended_latency_is_flagged_in_records_tables_and_the_pareto_plot(tmp_path, monkeypatch):
    """The real interference detector, given a quiet baseline no machine reaches, flags every measurement."""
    from profiling.fingerprint import device_fingerprint
    from profiling.interference import baseline_path
    from reports.metrics import BY_COLUMN
    from reports.plots import pareto_plot, report_style, save_figure
    from reports.study_data import study_data
    from reports.tables import write_tables
    from search import load_trials, run_search

    monkeypatch.setenv("HRVIT_NAS_CACHE_DIR", str(tmp_path / "cache"))  # this baseline must not reach other tests
    key = device_fingerprint("cpu", threads=1, volatile=False)["fingerprint_id"]
    baseline_path().parent.mkdir(parents=True)
    baseline_path().write_text(json.dumps({key: 1e-6}))
    study = run_search(tiny_settings(objectives="latency,params"), "busy", sqlite_url(tmp_path), 1)
    measurements = study.trials[0].user_attrs["measurements"]
    assert measurements["latency_contended"] is True and measurements["latency_interference_ratio"] > 1.1
    assert "latency_cpu_wait_pct" in measurements
    frame = load_trials(study)
    assert frame["latency_contended"].tolist() == [True]
    data = study_data(study)
    tables = write_tables(data, tmp_path)
    assert "latency_contended" in (tmp_path / "trials.csv").read_text().splitlines()[0].split(",")
    assert "latency_contended" in (tmp_path / "pareto.md").read_text()
    assert tables["trials"]
    with report_style():
        figure = pareto_plot(data, BY_COLUMN["latency_ms"], BY_COLUMN["params_m"])
        save_figure(figure, tmp_path / "pareto")
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "latency contended (1)" in labels
    from reports.export import ExportOptions, export_trials

    bundle, = export_trials(data, [0], tmp_path / "bundle", ExportOptions(data="synthetic:num_classes=4"))
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert (metrics["runtime"], metrics["dtype"], metrics["batch"]) == ("eager", "fp32", 1)  # what the latency means
    assert metrics["measurements"]["latency_contended"]["value"] is True


def test_search_max_seconds_bounds_every_measurement_and_is_refused_when_not_positive(tmp_path, monkeypatch, space_file, capsys):
    """``search --max-seconds`` reaches the profiler's request of every timed trial (the real profiler runs)."""
    import profiling
    from search import SearchSettings, run_search

    requests = []
    real_profile = profiling.profile

    def recording_profile(request, **options):
        requests.append(request)
        return real_profile(request, **options)

    monkeypatch.setattr(profiling, "profile", recording_profile)
    settings = tiny_settings(objectives="latency,params", max_seconds=4.0)
    assert SearchSettings.from_dict(settings.to_dict()).max_seconds == 4.0  # spawned workers get it too
    run_search(settings, "bounded", sqlite_url(tmp_path), 2)
    assert requests and all(r.max_seconds == 4.0 for r in requests)
    argv = ["search", "--study", "bad", "--run-dir", str(tmp_path / "bad"), "--space", str(space_file), "--device", "cpu",
            "--objectives", "params,latency", "--no-progress", "--max-seconds", "0"]
    code, out = run_cli(argv, capsys)
    assert code == 2 and out.err.startswith("error: --max-seconds 0.0") and "Traceback" not in out.err, out.err
    assert _study_names(tmp_path / "bad" / "study.db") == []
