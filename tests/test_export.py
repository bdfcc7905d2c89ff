"""Selectors and export bundles: grammar, choices, refusals, round trip into the trainer, ONNX/TorchScript."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import LATENCY_BUDGET_MS, make_study, run_cli, settled_bytes, two_branch_space
from search.records import open_study, pareto_trials, trial_config
from training.bundle import load_bundle


@pytest.fixture(scope="module")
def study_url(new_study_url) -> str:
    return new_study_url()


@pytest.fixture(scope="module")
def small_url(new_study_url) -> str:
    """A study over the two-branch space: its models build, train and export in seconds."""
    return new_study_url(name="small", budgets={}, trials=6, space=two_branch_space())


def export(study_url, *args) -> int:
    return run_cli(["export", "--study", "tiny", "--storage", study_url, *args])


# ----------------------------------------------------------------------------------- selectors
@pytest.mark.parametrize("text, kind, metric, limits", [
    ("pareto", "pareto", None, []),
    ("  Knee ", "knee", None, []),
    ("fastest under 30 ms", "best", "latency_ms", [("latency_ms", 30.0)]),
    ("best accuracy under 30ms", "best", "accuracy", [("latency_ms", 30.0)]),
    ("best accuracy under 5 mJ and 2.5 M", "best", "accuracy", [("energy_mj", 5.0), ("params_m", 2.5)]),
    ("smallest", "best", "params_m", []),
    ("best flops under 4 GFLOPs", "best", "gflops", [("gflops", 4.0)]),
])
def test_selector_grammar(text, kind, metric, limits):
    from reports.selectors import parse_selector

    selector = parse_selector(text)
    assert selector.kind == kind
    assert (selector.metric.column if selector.metric else None) == metric
    assert [(m.column, v) for m, v in selector.limits] == limits


@pytest.mark.parametrize("text", ["best", "quickest", "best speed", "fastest under 30", "fastest under 30 s", "knee under ms", ""])
def test_bad_selector_lists_valid_forms(text):
    from reports.selectors import SelectorError, parse_selector

    with pytest.raises(SelectorError, match="valid forms: .*pareto.*knee.*best OBJECTIVE.*under NUMBER UNIT"):
        parse_selector(text)


def test_selectors_pick_the_documented_trial(data):
    from reports.selectors import parse_selector, select

    feasible = data.feasible
    numbers = lambda text: list(select(data, parse_selector(text))["number"])
    assert numbers("pareto") == sorted(t.number for t in pareto_trials(data.study))
    assert numbers("fastest") == [int(feasible.loc[feasible["latency_ms"].idxmin(), "number"])]
    limit = float(feasible["latency_ms"].median())
    under = feasible[feasible["latency_ms"] <= limit]
    assert numbers(f"best accuracy under {limit} ms") == [int(under.loc[under["accuracy"].idxmax(), "number"])]
    assert numbers("best accuracy") == [int(feasible.loc[feasible["accuracy"].idxmax(), "number"])]
    (knee,) = numbers("knee")
    assert knee in numbers("pareto") and knee not in (numbers("fastest") + numbers("best accuracy"))


def test_unsatisfiable_selectors_say_how_to_relax(data, tmp_path):
    from reports.selectors import SelectorError, parse_selector, select
    from reports.study_data import load_study_data

    with pytest.raises(SelectorError, match=r"no feasible trial under 0.001 ms \(the lowest feasible latency is .*relax"):
        select(data, parse_selector("best accuracy under 0.001 ms"))
    url = f"sqlite:///{tmp_path / 'strict.db'}"
    make_study(url, name="strict", budgets={"max_latency_ms": 0.5}, trials=5)
    with pytest.raises(SelectorError, match="no feasible trial .*relax --max-latency-ms 0.5"):
        select(load_study_data("strict", url), parse_selector("knee"))


# -------------------------------------------------------------------------------------- bundles
def test_export_one_trial_round_trips_into_the_bundle_loader(study_url, data, tmp_path):
    from training.recipe import TrainRecipe

    number = int(data.pareto["number"].iloc[0])
    out = tmp_path / "bundle"
    assert export(study_url, "--trial", str(number), "--out", str(out)) == 0
    bundle = load_bundle(out)
    trial = open_study("tiny", study_url).trials[number]
    assert bundle.config.content_hash() == trial_config(trial).content_hash()
    assert "schema_version: 1" in (out / "config.yaml").read_text()
    assert bundle.recipe == TrainRecipe.for_dataset("ade20k")  # 150 classes: the paper's ADE20K recipe
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["measurements"]["latency_ms"] == {"value": trial.user_attrs["measurements"]["latency_ms"], "unit": "ms"}
    assert metrics["measurements"]["params_m_by_branch"]["unit"] == "M"
    assert metrics["fingerprint"]["cpu"] == "test-cpu" and metrics["feasible"] is True
    assert metrics["budgets"] == {"max_latency_ms": LATENCY_BUDGET_MS}
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json", "train.yaml"]


def test_export_pareto_writes_one_bundle_per_front_member(study_url, data, tmp_path):
    out = tmp_path / "front"
    assert export(study_url, "--pick", "pareto", "--out", str(out)) == 0
    expected = sorted(f"trial_{t.number:04d}" for t in pareto_trials(data.study))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == expected
    assert (out / "variants.csv").read_text().count("\n") == len(expected) + 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_export_refuses_to_overwrite_without_force(study_url, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert export(study_url, "--pick", "fastest", "--out", str(out)) == 0
    first = (out / "metrics.json").read_text()
    assert export(study_url, "--pick", "best accuracy", "--out", str(out)) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == first
    assert export(study_url, "--pick", "best accuracy", "--out", str(out), "--force") == 0  # a bundle of ours: replaced
    assert (out / "metrics.json").read_text() != first


def test_force_never_deletes_the_study_storage(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make_study(url, name="here", trials=4)
    before = settled_bytes(tmp_path / "study.db")
    assert run_cli(["export", "--study", "here", "--storage", url, "--trial", "1", "--out", str(tmp_path), "--force"]) == 2
    assert "which --force would delete" in capsys.readouterr().err
    assert (tmp_path / "study.db").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["--trial", "999"], "has no trial 999"),
    (["--trial", "15"], "did not complete (RuntimeError: out of memory)"),
    (["--pick", "cheapest"], "invalid selector 'cheapest'"),
    (["--pick", "best accuracy under 0.01 ms"], "no feasible trial under 0.01 ms"),
    (["--trial", "1", "--supernet", "missing.pt"], "--supernet and --calib-data go together"),
    (["--trial", "1", "--supernet", "s.pt", "--calib-data", "synthetic", "--calib-batches", "0"], "--calib-batches 0"),
    (["--trial", "1", "--data", "imagenet:/x"], "cannot read dataset 'imagenet:/x'"),
])
def test_export_errors_exit_2_and_write_nothing(study_url, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert export(study_url, *args, "--out", str(out)) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_exported_bundle_trains_with_one_command(small_url, tmp_path):
    bundle, run = tmp_path / "bundle", tmp_path / "run"
    assert run_cli(["export", "--study", "small", "--storage", small_url, "--pick", "knee", "--out", str(bundle),
                    "--data", "synthetic:num_samples=4,val_samples=1,size=32"]) == 0
    assert run_cli(["train", str(bundle), "--iterations", "1", "--out", str(run), "--device", "cpu"]) == 0
    assert (run / "weights.pt").is_file() and (run / "config.yaml").is_file()


def test_weights_are_sliced_from_the_supernet_with_recalibrated_bn(small_url, tmp_path):
    from hrvit_space.model import build_model
    from hrvit_space.supernet import HRViTSupernet
    from training.checkpoint import save_checkpoint
    from training.recipe import TrainRecipe

    torch.manual_seed(0)
    space = two_branch_space()
    supernet = HRViTSupernet(space)
    path = tmp_path / "supernet.pt"
    save_checkpoint(path, {"format": "hrvit-nas-supernet", "space": space.to_dict(),
                           "recipe": TrainRecipe.for_dataset("synthetic").to_dict(), "model": supernet.state_dict()})
    out = tmp_path / "bundle"
    assert run_cli(["export", "--study", "small", "--storage", small_url, "--pick", "smallest", "--out", str(out),
                    "--supernet", str(path), "--calib-data", "synthetic:num_samples=8,size=32", "--calib-batches", "1"]) == 0
    config = load_bundle(out).config
    assert config != space.largest().replace(name=config.name)  # a proper sub-network: weights are sliced
    state = torch.load(out / "weights.pt", weights_only=True)
    build_model(config).load_state_dict(state)  # strict: exactly the subnet's tensors
    shared = supernet.extract(config).state_dict()
    weights = [k for k in state if k.endswith("weight") and state[k].dim() > 1]
    assert weights and all(torch.equal(state[k], shared[k]) for k in weights)
    means = [k for k in state if k.endswith("running_mean")]
    assert means and all(not torch.equal(state[k], shared[k]) for k in means)  # statistics re-estimated


def test_onnx_and_torchscript_match_pytorch(small_url, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bundle"
    assert run_cli(["export", "--study", "small", "--storage", small_url, "--pick", "smallest", "--out", str(out), "--onnx", "--torchscript"]) == 0
    checks = json.loads((out / "metrics.json").read_text())["export_checks"]
    assert checks["onnx_max_abs_diff"] < 1e-4 and checks["torchscript_max_abs_diff"] < 1e-4
    assert (out / "model.onnx").stat().st_size > 0 and (out / "model.ts").stat().st_size > 0
    # what a deployer loads is the inference form, frozen: no BatchNorm left, weights inlined as constants
    deployed = torch.jit.load(str(out / "model.ts"))
    assert not list(deployed.parameters()) and "batch_norm" not in str(deployed.graph)
    import onnx

    assert "BatchNormalization" not in {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
