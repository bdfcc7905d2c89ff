"""Full training of one architecture config: data, model, initial weights, then the shared loop.

The optimiser and schedule live in ``training.optim``, the resumable data stream in ``training.stream``,
the loop with its checkpoints and signal handling in ``training.loop``, the logs in ``training.run_log``.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from hrvit_nas import UserError
from hrvit_space import ArchConfig
from training.checkpoint import CheckpointError, load_foreign_checkpoint, seed_everything
from training.distributed import init_distributed
from training.loop import BEST_FORMAT, TRAIN_FORMAT, EvalFn, run_training
from training.optim import Precision, segmentation_loss
from training.recipe import TrainRecipe

# ------------------------------------------------------------------------------ training a config
def train(
    config: ArchConfig,
    recipe: TrainRecipe,
    out_dir: str | Path,
    resume: bool = False,
    init_weights: str | Path | None = None,
    device: str = "auto",
    *,
    train_set: Dataset | None = None,
    val_set: Dataset | None = None,
    keep_last: int = 0,
    log_interval: int = 50,
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``config`` with ``recipe`` into ``out_dir``; return the final evaluation metrics.

    ``out_dir`` ends up an export bundle (config.yaml, train.yaml, weights.pt, metrics.json) plus
    ``checkpoint.pt``, ``best.pt`` and the logs of ``training.run_log``. ``train_set`` / ``val_set`` replace the recipe's dataset
    (for custom datasets in Python).
    """
    from hrvit_space import HRViT
    from training.bundle import Bundle, write_weights
    from training.data import DatasetSpec

    ctx = init_distributed(device)
    spec = DatasetSpec.from_dict(recipe.dataset)
    config = fit_config_to_data(config, recipe, spec.num_classes, log)
    if train_set is None:
        train_set = build_train_set(spec, recipe)
    if val_set is None:
        val_set = build_val_set(spec)
    if recipe.amp != "none" and ctx.device.type != "cuda":
        log(f"note: amp {recipe.amp} applies on CUDA only; this {ctx.device.type} run uses float32")
    seed_everything(recipe.seed)  # the same initial weights in every process and on every run
    model = HRViT(config)
    if recipe.grad_checkpointing:
        enable_grad_checkpointing(model)
    if init_weights is not None and not resume:
        load_init_weights(model, init_weights, log)

    out_dir = Path(out_dir)
    if ctx.is_main and not resume:
        Bundle(config, recipe, None).write(out_dir)  # a bundle from the start: `train --resume` and `export` read it

    def step(trained: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, precision: Precision, iteration: int) -> float:
        with precision.autocast():
            logits = trained(images)
        loss = segmentation_loss(logits, masks, spec.ignore_index)
        precision.backward(loss)
        return loss.item()

    evaluate = make_evaluator(val_set, spec, recipe, ctx.device)
    meta = {"config": config.to_dict(), "recipe": recipe.to_dict()}
    history = run_training(model, recipe, out_dir, train_set, step, evaluate=evaluate, meta=meta, resume=resume, ctx=ctx,
                           class_names=getattr(val_set, "class_names", None), keep_last=keep_last,
                           log_interval=log_interval, progress=progress, save_on_signal=True, log=log)
    if ctx.is_main:  # config, recipe and metrics.json (training.run_log) are in place: the final weights complete it
        write_weights(out_dir, model.state_dict())
    return history[-1] if history else {}


def fit_config_to_data(config: ArchConfig, recipe: TrainRecipe, num_classes: int, log: Callable[[str], None] = print) -> ArchConfig:
    """Apply the recipe's drop-path rate and the dataset's class count to the config's head."""
    import dataclasses

    if recipe.drop_path_rate is not None:
        config = config.replace(drop_path_rate=recipe.drop_path_rate)
    if config.head.kind != "segformer":
        raise UserError(f"config head is {config.head.kind!r}; segmentation training needs head.kind: segformer")
    if config.head.num_classes != num_classes:
        log(f"note: head.num_classes {config.head.num_classes} -> {num_classes} to match the dataset")
        config = config.replace(head=dataclasses.replace(config.head, num_classes=num_classes))
    return config


def build_train_set(spec, recipe: TrainRecipe) -> Dataset:
    from training.data import build_dataset
    from training.data.transforms import TrainTransform

    flip = 0.5 if spec.mirror_invariant else 0.0
    return build_dataset(spec, "train", transform=TrainTransform(recipe.crop_size, ignore_index=spec.ignore_index, flip_prob=flip))


def build_val_set(spec) -> Dataset:
    from training.data import build_dataset
    from training.data.transforms import EvalTransform

    return build_dataset(spec, "val", transform=EvalTransform())


def eval_batch_size(spec) -> int:
    """Generated images (synthetic, mni152) share one size, so they batch; real datasets vary per image."""
    return 8 if spec.image_size is not None else 1


def make_evaluator(val_set: Dataset, spec, recipe: TrainRecipe, device: torch.device) -> EvalFn:
    """mIoU & co. on the validation set, whole-image or sliding-window as the recipe says."""
    from training.inference import evaluate

    loader = DataLoader(val_set, batch_size=eval_batch_size(spec), shuffle=False, num_workers=min(recipe.num_workers, 2),
                        generator=torch.Generator().manual_seed(0))

    def run(model: torch.nn.Module) -> dict[str, Any]:
        return evaluate(model, loader, spec.num_classes, mode=recipe.eval_mode, crop=recipe.crop_size,
                        stride=recipe.sliding_stride(), device=device, ignore_index=spec.ignore_index)

    return run


def load_init_weights(model: torch.nn.Module, path: str | Path, log: Callable[[str], None] = print) -> None:
    """Start from our weights/checkpoint/supernet or a reference-format (timm/mmseg) checkpoint.

    Tensors whose name or shape does not fit (e.g. a classifier for another class count) keep their
    fresh initialisation, which is what fine-tuning on a new dataset needs.
    """
    from hrvit_space import reference_key

    state, ignored = load_foreign_checkpoint(path)
    if ignored:
        log(f"note: {path} also pickles {', '.join(ignored)}; those objects were not loaded (only tensors are read)")
    if isinstance(state, dict) and state.get("format") in (TRAIN_FORMAT, BEST_FORMAT, "hrvit-nas-supernet"):
        state = state["model"]
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict; pass weights.pt, checkpoint.pt, supernet.pt or a reference checkpoint")
    own = model.state_dict()
    if any(key in own for key in state):
        names = {key: key for key in own}
    else:
        state = {key.removeprefix("module.").removeprefix("backbone."): value for key, value in state.items()}
        names = {}
        for key in own:
            with contextlib.suppress(KeyError):
                names[reference_key(key, model.config.head.kind)] = key
    loaded = {
        key: state[source] for source, key in names.items()
        if isinstance(state.get(source), torch.Tensor) and state[source].shape == own[key].shape
    }
    if not loaded:
        raise CheckpointError(f"no tensor of {path} fits this model (names or shapes differ); pass weights of the same architecture")
    model.load_state_dict(loaded, strict=False)
    skipped = sorted(set(own) - set(loaded))
    log(f"initialised {len(loaded)}/{len(own)} tensors from {path}" + (f"; kept fresh: {', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''}" if skipped else ""))


def enable_grad_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each HRViT block in the backward pass instead of storing its activations."""
    from torch.utils.checkpoint import checkpoint

    from hrvit_space import Block

    for block in (m for m in model.modules() if isinstance(m, Block)):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
