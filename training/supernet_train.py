"""Weight-sharing supernet training with the sandwich rule and in-place distillation (BigNAS / OFA style).

Each step trains the largest member on the labels, then the smallest and ``random_members`` random
members against the largest member's soft predictions (``distill="labels"``: on the labels too); gradients of all members add up before one
optimizer step. Members are drawn from ``(seed, iteration)``, so every process picks the same ones and
a resumed run picks the same ones as an uninterrupted run.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from hrvit_nas import UserError
from hrvit_space import SearchSpace
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, seed_everything
from training.distributed import init_distributed
from training.evaluation import evaluate_member
from training.recipe import TrainRecipe
from training.trainer import (
    Precision, build_train_set, build_val_set, enable_grad_checkpointing, load_init_weights, run_training, segmentation_loss,
)

SUPERNET_FILE = "supernet.pt"
# kl / hard: in-place distillation from the largest member; labels: every member learns from the labels
# (no distillation; the ablation that says whether distillation is what makes members score alike).
DISTILL_MODES = ("kl", "hard", "labels")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-pixel KL(teacher || student) on softmax outputs, or CE on the teacher's argmax (``hard``)."""
    if mode == "hard":
        return F.cross_entropy(student.float(), teacher.argmax(1))
    teacher_log = F.log_softmax(teacher.float(), dim=1)
    student_log = F.log_softmax(student.float(), dim=1)
    return (teacher_log.exp() * (teacher_log - student_log)).sum(1).mean()


def sandwich_members(space: SearchSpace, seed: int, iteration: int, random_members: int) -> list:
    """Largest first (the teacher), then the smallest and ``random_members`` random members."""
    rng = random.Random(seed * 1_000_003 + iteration)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(random_members)]


def fit_space_to_data(space: SearchSpace, num_classes: int, log: Callable[[str], None] = print) -> SearchSpace:
    """The supernet's head predicts the dataset's classes; drop path off (members differ in depth)."""
    import dataclasses

    base = space.base
    if base.head.kind != "segformer":
        raise UserError(f"space base head is {base.head.kind!r}; supernet training needs head kind segformer")
    if base.head.num_classes != num_classes:
        log(f"note: head.num_classes {base.head.num_classes} -> {num_classes} to match the dataset")
    base = base.replace(head=dataclasses.replace(base.head, num_classes=num_classes), drop_path_rate=0.0)
    return SearchSpace(base, space.depth_choices, space.window_choices, space.ratio_choices)


def train_supernet(
    space: SearchSpace,
    recipe: TrainRecipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    init: str | Path | None = None,
    device: str = "auto",
    random_members: int = 2,
    distill: str = "kl",
    log: Callable[[str], None] = print,
) -> Path:
    """Train a supernet over ``space`` into ``out_dir``; return the path of ``supernet.pt``.

    ``init`` is our own checkpoint/supernet/weights file or a reference-format HRViT checkpoint.
    """
    from hrvit_space import HRViTSupernet
    from training.data import DatasetSpec

    if distill not in DISTILL_MODES:
        raise UserError(f"distillation mode {distill!r} unknown; allowed: {', '.join(DISTILL_MODES)}")
    if not isinstance(random_members, int) or random_members < 0:
        raise UserError(f"random_members={random_members!r}; allowed: an integer >= 0")
    ctx = init_distributed(device)
    spec = DatasetSpec.from_dict(recipe.dataset)
    space = fit_space_to_data(space, spec.num_classes, log)
    seed_everything(recipe.seed)
    supernet = HRViTSupernet(space)
    if recipe.grad_checkpointing:
        enable_grad_checkpointing(supernet)
    if init is not None and not resume:
        load_init_weights(supernet, init, log)
    train_set, val_set = build_train_set(spec, recipe), build_val_set(spec)

    def step(trained: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, precision: Precision, iteration: int) -> float:
        net = getattr(trained, "module", trained)
        total, teacher = 0.0, None
        for member in sandwich_members(space, recipe.seed, iteration, random_members):
            net.set_active(member)
            with precision.autocast():
                logits = trained(images)
            if teacher is None or distill == "labels":
                loss = segmentation_loss(logits, masks, spec.ignore_index)
                teacher = logits.detach()
            else:
                loss = distillation_loss(logits, teacher, distill)
            precision.backward(loss)
            total += loss.item()
        return total

    def evaluate(model: torch.nn.Module) -> dict[str, Any]:
        metrics = {}
        for label, member in (("largest", space.largest()), ("smallest", space.smallest())):
            result = evaluate_member(model, member, train_set, val_set, spec, recipe, ctx.device, batches=4)
            metrics[f"{label}_miou"] = result["miou"]
        return metrics

    out_dir = Path(out_dir)
    if ctx.is_main and not resume:
        out_dir.mkdir(parents=True, exist_ok=True)
        space.save(out_dir / "space.yaml")
        recipe.save(out_dir / "train.yaml")
    meta = {"space": space.to_dict(), "recipe": recipe.to_dict(), "random_members": random_members, "distill": distill}
    run_training(supernet, recipe, out_dir, train_set, step, evaluate=evaluate, meta=meta, resume=resume,
                 ctx=ctx, find_unused=True, save_on_signal=True, log=log)
    path = out_dir / SUPERNET_FILE
    if ctx.is_main:
        save_checkpoint(path, {"format": "hrvit-nas-supernet", "space": space.to_dict(), "recipe": recipe.to_dict(),
                               "model": supernet.state_dict()})
    return path


def load_supernet(path: str | Path, device: str | torch.device = "cpu"):
    """(supernet module, its SearchSpace, its TrainRecipe) from ``supernet.pt`` or a supernet ``checkpoint.pt``."""
    from hrvit_space import HRViTSupernet

    state = load_checkpoint(path)
    if not isinstance(state, dict):  # e.g. a bare tensor: reported below as not a supernet checkpoint
        state = {}
    if state.get("format") == "hrvit-nas-supernet":
        space_dict, recipe_dict, weights = state["space"], state["recipe"], state["model"]
    elif state.get("format") == "hrvit-nas-train" and "space" in state.get("meta", {}):
        space_dict, recipe_dict, weights = state["meta"]["space"], state["meta"]["recipe"], state["model"]
    else:
        raise CheckpointError(f"{path} is not a supernet checkpoint; pass the {SUPERNET_FILE} written by `hrvit-nas train-supernet`")
    space = SearchSpace.from_dict(space_dict)
    supernet = HRViTSupernet(space)
    supernet.load_state_dict(weights)
    return supernet.to(device), space, TrainRecipe.from_dict(recipe_dict)
