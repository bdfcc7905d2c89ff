"""Full training on the synthetic dataset: learning, exact resume, NaN stop, outputs, CLI."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch.utils.data import Dataset

from hrvit_nas.errors import UserError
from hrvit_space.config import ArchConfig, HeadConfig
from hrvit_space.model import HRViT
from training import TrainingDiverged, TrainRecipe, load_bundle, train
from training.checkpoint import CheckpointError, load_checkpoint
from training.data import DatasetSpec, TrainTransform, build_dataset
from training.optim import lr_factor, param_groups, segmentation_loss
from training.trainer import enable_grad_checkpointing, load_init_weights


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(argv: list[str]) -> int:
    from hrvit_nas.cli import main

    return main(argv)


SPEC = DatasetSpec.parse("synthetic:num_samples=64,val_samples=32,size=32,num_classes=4,seed=0")


def tiny_config(**changes) -> ArchConfig:
    config = ArchConfig(
        channels=(16, 32), depths=((1,), (1, 1)), window_sizes=(1, 2), mlp_ratios=(2, 2), dim_head=8,
        head=HeadConfig(width=32, num_classes=4, dropout=0.0), drop_path_rate=0.0, input_size=(32, 32), name="tiny",
    )
    return config.replace(**changes)


def tiny_recipe(**changes) -> TrainRecipe:
    return TrainRecipe.for_spec(SPEC, **{"batch_size": 4, "iterations": 8, "eval_interval": 0, "checkpoint_interval": 0, **changes})


class Faulty(Dataset):
    """The training set, until sample number ``after`` has been read: then NaN images or a crash."""

    def __init__(self, dataset: Dataset, after: int, fault: str) -> None:
        self.dataset, self.after, self.fault, self.reads = dataset, after, fault, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.reads += 1
        image, mask = self.dataset[index]
        if self.reads > self.after:
            if self.fault == "crash":
                raise RuntimeError("simulated crash (power loss)")
            image = torch.full_like(image, float("nan"))
        return image, mask


def train_set_for(recipe: TrainRecipe) -> Dataset:
    return build_dataset(SPEC, "train", transform=TrainTransform(recipe.crop_size))


def majority_class_miou(val_set) -> float:
    """mIoU of predicting the most frequent class everywhere: what a model that learned nothing gets."""
    counts = torch.zeros(SPEC.num_classes)
    for _, mask in val_set:
        counts += torch.bincount(mask.flatten(), minlength=SPEC.num_classes)[: SPEC.num_classes]
    return float(counts.max() / counts.sum()) / SPEC.num_classes


def test_small_config_learns_and_out_dir_is_a_bundle(tmp_path):
    recipe = tiny_recipe(iterations=48, batch_size=4, lr=5e-3, warmup_iters=5, eval_interval=24)
    metrics = train(tiny_config(), recipe, tmp_path, device="cpu", log=lambda _: None)

    chance = majority_class_miou(build_dataset(SPEC, "val"))
    assert chance < 0.25
    assert metrics["miou"] > 0.4 and metrics["miou"] > chance + 0.2, metrics
    assert metrics["iteration"] == 48

    bundle = load_bundle(tmp_path)
    assert bundle.config == tiny_config() and bundle.recipe == recipe
    assert bundle.metrics["miou"] == pytest.approx(metrics["miou"])
    assert [row["class"] for row in bundle.metrics["per_class"]][0] == "background"
    model = HRViT(bundle.config)
    model.load_state_dict(torch.load(bundle.weights_path))
    history = (tmp_path / "eval_history.csv").read_text().splitlines()
    assert history[0].startswith("iteration,miou") and [line.split(",")[0] for line in history[1:]] == ["24", "48"]
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 1 + SPEC.num_classes


def _weights(path):
    return load_checkpoint(path)["model"]


def test_interrupted_run_resumes_bit_exactly(tmp_path):
    # Drop path and head dropout exercise the model RNG; augmentation exercises the data RNG.
    config = tiny_config(drop_path_rate=0.2, head=HeadConfig(width=32, num_classes=4, dropout=0.1))
    recipe = tiny_recipe(iterations=8, checkpoint_interval=3, eval_interval=4)
    quiet = {"device": "cpu", "log": lambda _: None}
    full = train(config, recipe, tmp_path / "full", **quiet)

    crashing = Faulty(train_set_for(recipe), after=5 * recipe.batch_size, fault="crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, recipe, tmp_path / "resumed", train_set=crashing, **quiet)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["iteration"] == 3
    resumed = train(config, recipe, tmp_path / "resumed", resume=True, **quiet)

    assert resumed == full
    expected, got = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(tmp_path / "resumed" / "checkpoint.pt")
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert (tmp_path / "full" / "eval_history.csv").read_text() == (tmp_path / "resumed" / "eval_history.csv").read_text()


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    recipe = tiny_recipe(iterations=8, checkpoint_interval=2)
    poisoned = Faulty(train_set_for(recipe), after=4 * recipe.batch_size, fault="nan")
    with pytest.raises(TrainingDiverged, match=r"loss became nan at iteration 5.*checkpoint\.pt \(iteration 4\) is kept"):
        train(tiny_config(), recipe, tmp_path, device="cpu", train_set=poisoned, log=lambda _: None)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["iteration"] == 4
    assert all(torch.isfinite(value).all() for value in state["model"].values() if value.is_floating_point())
    assert not (tmp_path / "weights.pt").exists()


def test_existing_run_is_kept_and_resume_needs_the_same_recipe(tmp_path):
    # Also runs the optional paths: gradient clipping, checkpointing, AMP (float32 on CPU, with a note).
    recipe = tiny_recipe(iterations=2, grad_clip=0.5, grad_checkpointing=True, amp="bf16")
    lines: list[str] = []
    train(tiny_config(), recipe, tmp_path, device="cpu", log=lines.append)
    assert any("amp bf16 applies on CUDA only" in line for line in lines)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a training run.*--resume"):
        train(tiny_config(), recipe, tmp_path, device="cpu", log=lambda _: None)
    with pytest.raises(CheckpointError, match="different recipe"):
        train(tiny_config(), recipe.replace(lr=1e-2), tmp_path, resume=True, device="cpu", log=lambda _: None)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    with pytest.raises(CheckpointError, match="not found"):
        train(tiny_config(), recipe, tmp_path / "fresh", resume=True, device="cpu", log=lambda _: None)


def test_learning_rate_schedule_follows_warmup_then_poly():
    recipe = TrainRecipe.for_dataset("ade20k")
    assert lr_factor(0, recipe) == pytest.approx(1e-6)
    assert lr_factor(750, recipe) == pytest.approx((1 - 750 / 160_000) * (0.5 + 0.5 * 1e-6))
    assert lr_factor(1500, recipe) == pytest.approx(1 - 1500 / 160_000)
    assert lr_factor(159_999, recipe) == pytest.approx(1 / 160_000)


def test_param_groups_head_lr_and_no_decay_on_norms_and_biases():
    model = HRViT(tiny_config())
    recipe = TrainRecipe.for_dataset("ade20k")
    groups = param_groups(model, recipe)
    by_id = {id(p): group for group in groups for p in group["params"]}
    for name, param in model.named_parameters():
        group = by_id[id(param)]
        assert group["lr"] == pytest.approx(6e-4 if name.startswith("head.") else 6e-5), name
        assert group["weight_decay"] == (0.0 if param.ndim == 1 else 0.01), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_init_weights_from_own_and_reference_format(tmp_path):
    from hrvit_space.reference import to_reference_state_dict

    source = HRViT(tiny_config())
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in to_reference_state_dict(source).items()}}, tmp_path / "ref.pth")
    for name in ("weights.pt", "ref.pth"):
        target = HRViT(tiny_config())
        load_init_weights(target, tmp_path / name, log=lambda _: None)
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values())), name

    # Fine-tuning to another class count: everything but the classifier is inherited.
    other = HRViT(tiny_config(head=HeadConfig(width=32, num_classes=7, dropout=0.0)))
    lines = []
    load_init_weights(other, tmp_path / "weights.pt", log=lines.append)
    assert torch.equal(other.stem.conv1.conv.weight, source.stem.conv1.conv.weight)
    assert other.head.classifier.weight.shape[0] == 7 and "head.classifier" in lines[0]
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="no tensor"):
        load_init_weights(HRViT(tiny_config()), tmp_path / "junk.pt")


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = HRViT(tiny_config())
    checkpointed = HRViT(tiny_config())
    checkpointed.load_state_dict(plain.state_dict())
    enable_grad_checkpointing(checkpointed)
    images, masks = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    for model in (plain, checkpointed):
        segmentation_loss(model(images), masks, 255).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_train_from_config_and_bundle(tmp_path, capsys):
    tiny_config().save(tmp_path / "config.yaml")
    data = "synthetic:num_samples=16,val_samples=8,size=32,num_classes=4"
    code = run_cli(["train", str(tmp_path / "config.yaml"), "--data", data, "--iterations", "2", "--out", str(tmp_path / "run"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out[out.index("{"):])
    assert summary["out"] == str(tmp_path / "run") and 0 <= summary["miou"] <= 1
    bundle = load_bundle(tmp_path / "run")
    assert bundle.weights_path is not None and bundle.recipe.iterations == 2
    # A trained run is a bundle: train it again (it starts from its weights) into another directory.
    code = run_cli(["train", str(tmp_path / "run"), "--iterations", "1", "--out", str(tmp_path / "again"), "--device", "cpu"])
    assert code == 0
    assert "initialised" in capsys.readouterr().out
    assert load_bundle(tmp_path / "again").recipe.dataset == bundle.recipe.dataset


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "imagenet:/x"], "cannot read dataset 'imagenet:/x'"),
        (["--data", "ade20k:/no/such/dir"], "/no/such/dir"),
        ([], "no dataset given; pass --data"),
        (["--data", "synthetic", "--iterations", "0"], "--iterations 0"),
        (["--data", "synthetic", "--device", "cuda:0"] if not torch.cuda.is_available() else ["--data", "bogus"], "cuda|bogus"),
    ],
)
def test_cli_train_bad_input_exits_2_with_message(tmp_path, capsys, argv, message):
    tiny_config().save(tmp_path / "config.yaml")
    code = run_cli(["train", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_missing_bundle_files_and_recipe_exit_2(tmp_path, capsys):
    (tmp_path / "bundle").mkdir()
    assert run_cli(["train", str(tmp_path / "bundle")]) == 2
    assert "lacks config.yaml, train.yaml" in capsys.readouterr().err
    assert run_cli(["train", str(tmp_path / "nothing.yaml"), "--data", "synthetic"]) == 2
    assert "not found" in capsys.readouterr().err


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        train(tiny_config(), tiny_recipe(iterations=2, checkpoint_interval=1), out, device="cpu", log=lambda _: None)
        with pytest.raises(UserError, match="sync_bn needs one CUDA device"):
            train(tiny_config(), tiny_recipe(iterations=2, sync_bn=True), out + "-sync", device="cpu", log=lambda _: None)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_training_like_torchrun(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path / "run")), nprocs=2, start_method="fork")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["iteration"] == 2 and len(state["rng"]) == 2  # one RNG state per process, for exact resume
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert load_bundle(tmp_path / "run").weights_path is not None


def test_cli_bundle_recipe_without_dataset_root_asks_for_data(tmp_path, capsys):
    tiny_config().save(tmp_path / "config.yaml")
    TrainRecipe.for_dataset("ade20k").save(tmp_path / "train.yaml")
    assert run_cli(["train", str(tmp_path)]) == 2
    assert re.search(r"needs a root directory.*pass --data SPEC", capsys.readouterr().err)


@pytest.mark.parametrize("device", ["meta", "cuda:7" if torch.cuda.is_available() else "cuda"])
def test_training_devices_follow_the_profilers_rule(device):
    """One resolve_device (profiling.device): training refuses what the profiler refuses, before any work."""
    from training.distributed import init_distributed

    if torch.cuda.device_count() > 7:
        pytest.skip("needs fewer than 8 GPUs")
    with pytest.raises(UserError, match="not supported|no CUDA GPU|only"):
        init_distributed(device)
