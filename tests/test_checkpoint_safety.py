"""No code runs from a user's .pt file: every CLI path that loads one refuses a pickle payload (exit 2),
while a reference checkpoint that pickles harmless objects (an argparse Namespace) still imports."""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch

from conftest import run_cli, two_branch_space
from hrvit_space.model import HRViT
from hrvit_space.reference import to_reference_state_dict
from tests.test_training import tiny_config, tiny_recipe
from training.checkpoint import CheckpointError, load_checkpoint, load_foreign_checkpoint
from training.trainer import load_init_weights

DATA = "synthetic:num_samples=16,val_samples=8,size=32,num_classes=4"


class Payload:
    """Unpickling this object calls ``open(marker, "w")``: the file appears iff the pickle ran."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payload(path, marker, legacy: bool = False) -> None:
    content = {"state_dict": {"weight": torch.zeros(2)}, "meta": Payload(marker)}
    if legacy:  # a plain pickle stream, as torch.save wrote before its zip format
        with open(path, "wb") as handle:
            pickle.dump(content, handle, protocol=2)
    else:
        torch.save(content, path)


@pytest.fixture(scope="module")
def study_url(new_study_url):
    return new_study_url(name="small", budgets={}, trials=3, space=two_branch_space())


def _bundle_with(tmp_path, weights_writer):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    tiny_config().save(bundle / "config.yaml")
    tiny_recipe().save(bundle / "train.yaml")
    weights_writer(bundle / "weights.pt")
    return [str(bundle), "--out", str(tmp_path / "run"), "--device", "cpu"]


PATHS = ["train BUNDLE", "train --init", "train --resume", "export --supernet", "rank-check --supernet",
         "search --estimator supernet"]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("path", PATHS)
def test_pickle_payload_is_refused_on_every_cli_path(tmp_path, capsys, path, legacy, request):
    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "evil.pt"
    write_payload(evil, marker, legacy)
    tiny_config().save(tmp_path / "config.yaml")
    config = str(tmp_path / "config.yaml")
    if path == "train BUNDLE":
        argv = ["train", *_bundle_with(tmp_path, lambda target: write_payload(target, marker, legacy))]
    elif path == "train --init":
        argv = ["train", config, "--data", DATA, "--init", str(evil), "--out", str(tmp_path / "run"), "--device", "cpu"]
    elif path == "train --resume":
        (tmp_path / "run").mkdir()
        write_payload(tmp_path / "run" / "checkpoint.pt", marker, legacy)
        argv = ["train", config, "--data", DATA, "--resume", "--out", str(tmp_path / "run"), "--device", "cpu"]
    elif path == "export --supernet":
        argv = ["export", "--study", "small", "--storage", request.getfixturevalue("study_url"), "--trial", "0",
                "--supernet", str(evil), "--calib-data", DATA, "--out", str(tmp_path / "export")]
    elif path == "rank-check --supernet":
        argv = ["rank-check", "--supernet", str(evil), "--data", DATA, "--members", "3", "--device", "cpu"]
    else:
        argv = ["search", "--study", "s", "--storage", f"sqlite:///{tmp_path / 's.db'}", "--trials", "1", "--device", "cpu",
                "--estimator", "supernet", "--estimator-option", f"checkpoint={evil}", "--no-progress"]
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert not marker.exists(), "the pickle payload ran"
    assert code == 2, err
    assert "refused to load" in err and "Traceback" not in err, err


def test_reference_checkpoint_with_pickled_namespace_still_imports(tmp_path):
    """timm/reference checkpoints pickle their argparse args: tensors load, the Namespace is named and dropped."""
    source = HRViT(tiny_config())
    state = {f"backbone.{k}": v for k, v in to_reference_state_dict(source).items()}
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=6e-5, model="hrvit_b1"), "epoch": 3}, tmp_path / "ref.pth")

    with pytest.raises(CheckpointError, match=r"refused to load .*argparse\.Namespace"):
        load_checkpoint(tmp_path / "ref.pth")  # our own formats never need it
    content, ignored = load_foreign_checkpoint(tmp_path / "ref.pth")
    assert ignored == ["argparse.Namespace"] and content["epoch"] == 3

    target, lines = HRViT(tiny_config()), []
    load_init_weights(target, tmp_path / "ref.pth", log=lines.append)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    assert any("argparse.Namespace" in line and "not loaded" in line for line in lines), lines


def test_training_checkpoints_hold_only_weights_only_data(tmp_path):
    """Our checkpoint (RNG states included) loads under weights_only=True with no allow-listed types."""
    from training import train

    train(tiny_config(), tiny_recipe(iterations=2), tmp_path, device="cpu", log=lambda _: None)
    for name in ("checkpoint.pt", "best.pt", "weights.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / name) == [], name
        torch.load(tmp_path / name, weights_only=True)


def test_a_bare_tensor_given_as_supernet_is_a_clean_error(tmp_path, capsys):
    torch.save(torch.zeros(2), tmp_path / "tensor.pt")
    assert run_cli(["rank-check", "--supernet", str(tmp_path / "tensor.pt"), "--data", DATA, "--device", "cpu"]) == 2
    assert "is not a supernet checkpoint" in capsys.readouterr().err
