"""Observable training: CSV and TensorBoard logs, best.pt, --keep-last, save on SIGTERM/SIGINT and exact resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import Dataset

from hrvit_space.config import ArchConfig
from tests.test_training import run_cli, tiny_config, tiny_recipe, train_set_for
from training import TrainingInterrupted, TrainRecipe, train
from training.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"device": "cpu", "log": lambda _: None}


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_and_tensorboard_logs_hold_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_config(), tiny_recipe(iterations=6, eval_interval=3), tmp_path, log_interval=2, **QUIET)

    rows = read_csv(tmp_path / "train_log.csv")
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]
    assert all(float(r["loss"]) > 0 and float(r["images_per_s"]) > 0 and float(r["memory_mib"]) > 0 for r in rows)
    history = read_csv(tmp_path / "eval_history.csv")
    assert [int(r["iteration"]) for r in history] == [3, 6]
    assert {"miou", "pixel_accuracy", "iou.background"} <= set(history[0])

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    for column in ("loss", "lr", "images_per_s", "memory_mib"):
        assert scalars[f"train/{column}"] == [(int(r["iteration"]), pytest.approx(float(r[column]))) for r in rows], column
    assert scalars["val/miou"] == [(int(r["iteration"]), pytest.approx(float(r["miou"]))) for r in history]
    assert [value for _, value in scalars["val_iou/background"]] == pytest.approx([float(r["iou.background"]) for r in history])


def test_without_tensorboard_installed_the_csv_log_is_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what `import` sees when the extra is missing
    train(tiny_config(), tiny_recipe(iterations=2), tmp_path, log_interval=1, **QUIET)
    assert [int(r["iteration"]) for r in read_csv(tmp_path / "train_log.csv")] == [1, 2]
    assert not (tmp_path / "tensorboard").exists()


def test_best_checkpoint_and_keep_last(tmp_path):
    recipe = tiny_recipe(iterations=8, eval_interval=2, checkpoint_interval=2, lr=5e-3, warmup_iters=2)
    train(tiny_config(), recipe, tmp_path, keep_last=2, **QUIET)
    history = read_csv(tmp_path / "eval_history.csv")
    best_row = max(history, key=lambda r: float(r["miou"]))
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["iteration"] == int(best_row["iteration"]) and best["miou"] == pytest.approx(float(best_row["miou"]))
    assert sorted(p.name for p in tmp_path.glob("iter_*.pt")) == ["iter_0000006.pt", "iter_0000008.pt"]
    assert load_checkpoint(tmp_path / "iter_0000006.pt")["iteration"] == 6


def _same_run(expected_dir, got_dir) -> None:
    expected, got = load_checkpoint(expected_dir / "checkpoint.pt"), load_checkpoint(got_dir / "checkpoint.pt")
    assert expected["iteration"] == got["iteration"]
    assert all(torch.equal(expected["model"][key], got["model"][key]) for key in expected["model"])
    columns = ("iteration", "loss", "lr")
    assert [[r[c] for c in columns] for r in read_csv(expected_dir / "train_log.csv")] == \
        [[r[c] for c in columns] for r in read_csv(got_dir / "train_log.csv")]


def test_sigterm_saves_a_checkpoint_that_resumes_bit_exactly(tmp_path):
    """A real `hrvit-nas train` process gets SIGTERM mid-run, saves, exits 143; the resume matches."""
    tiny_config(drop_path_rate=0.1).save(tmp_path / "config.yaml")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "hrvit_nas.cli", "train", str(tmp_path / "config.yaml"), "--out", str(run),
               "--data", "synthetic:num_samples=16,val_samples=4,size=32,num_classes=4,seed=0", "--iterations", "24",
               "--device", "cpu", "--log-interval", "1", "--cfg-options", "batch_size=4", "eval_interval=0", "checkpoint_interval=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = run / "train_log.csv"
    deadline = time.monotonic() + 120
    while (not log.is_file() or log.read_text().count("\n") < 3) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    stopped_at = load_checkpoint(run / "checkpoint.pt")["iteration"]
    assert 2 <= stopped_at < 24

    config, recipe = ArchConfig.load(run / "config.yaml"), TrainRecipe.load(run / "train.yaml")
    train(config, recipe, run, resume=True, log_interval=1, **QUIET)
    train(config, recipe, tmp_path / "uninterrupted", log_interval=1, **QUIET)
    _same_run(tmp_path / "uninterrupted", run)


class Interrupting(Dataset):
    """The training set, but reading sample number ``after`` sends this process SIGINT (Ctrl-C)."""

    def __init__(self, dataset: Dataset, after: int) -> None:
        self.dataset, self.after, self.reads = dataset, after, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads += 1
        if self.reads == self.after:
            os.kill(os.getpid(), signal.SIGINT)
        return self.dataset[index]


def test_ctrl_c_finishes_the_iteration_saves_and_resumes_bit_exactly(tmp_path):
    config = tiny_config(drop_path_rate=0.1)
    recipe = tiny_recipe(iterations=6, checkpoint_interval=0, eval_interval=3)
    interrupting = Interrupting(train_set_for(recipe), after=2 * recipe.batch_size + 1)
    handler = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN when started in the background by a shell
    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGINT after iteration 3/6") as stopped:
        train(config, recipe, tmp_path / "run", train_set=interrupting, log_interval=1, **QUIET)
    assert stopped.value.exit_code == 130
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["iteration"] == 3
    assert signal.getsignal(signal.SIGINT) is handler  # handlers are restored
    train(config, recipe, tmp_path / "run", resume=True, log_interval=1, **QUIET)
    train(config, recipe, tmp_path / "full", log_interval=1, **QUIET)
    _same_run(tmp_path / "full", tmp_path / "run")
    assert read_csv(tmp_path / "full" / "eval_history.csv") == read_csv(tmp_path / "run" / "eval_history.csv")


def test_cfg_options_override_any_recipe_field(tmp_path, capsys):
    from training.overrides import apply_cfg_options

    recipe = apply_cfg_options(tiny_recipe(), ["lr=1e-4", "crop_size=[16,24]", "grad_clip=null", "amp=bf16",
                                               "dataset.num_samples=8", "warmup_ratio=1e-3"])
    assert (recipe.lr, recipe.crop_size, recipe.grad_clip, recipe.amp) == (1e-4, (16, 24), None, "bf16")
    assert recipe.dataset["num_samples"] == 8 and recipe.warmup_ratio == 1e-3
    tiny_config().save(tmp_path / "config.yaml")
    for option, message in (("lrr=1", "no recipe field 'lrr'; allowed: dataset"), ("lr=-1", "recipe lr: got -1"),
                            ("lr", "expected KEY=VALUE"), ("lr.x=1", "lr is not a mapping")):
        code = run_cli(["train", str(tmp_path / "config.yaml"), "--data", "synthetic", "--out", str(tmp_path / "run"),
                        "--cfg-options", option])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.startswith("error: "), err
    assert not (tmp_path / "run").exists()
