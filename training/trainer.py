"""Full training of one architecture, and the loop that supernet training shares.

Choices (following the SegFormer/HRViT mmseg recipe):
- AdamW; the head (parameters under ``head.``) gets ``head_lr_mult`` x the learning rate.
- No weight decay on 1-d parameters (norm scales, biases) and on relative-position-bias tables: decaying
  them only shrinks normalisation and attention biases towards zero, as the reference config also avoids.
- Learning rate: poly decay ``(1 - it / iterations) ** power`` times a linear warm-up from
  ``warmup_ratio`` to 1 over ``warmup_iters`` (mmcv's formula), stepped every iteration.
- Exact resume: the data stream is a pure function of (seed, rank, position) and each sample's
  augmentation runs under its own seed, so workers and restarts cannot change it; model randomness
  (drop path, dropout) comes from the global generators, whose states the checkpoint stores.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from hrvit_nas.atomic import atomic_write_text
from hrvit_nas.errors import UserError
from hrvit_space.config import ArchConfig
from training.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from training.distributed import DistContext, all_gather_objects, barrier, init_distributed, wrap_model
from training.recipe import TrainRecipe

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "eval_history.csv"
# Recipe fields that do not change the computed result, so a resume may change them.
RESUME_MAY_CHANGE = ("num_workers", "eval_interval", "checkpoint_interval")


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------------ optimisation
def _no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    return param.ndim <= 1 or "relative_position_bias" in name or "pos_embed" in name


def param_groups(model: torch.nn.Module, recipe: TrainRecipe) -> list[dict[str, Any]]:
    """Four groups: (backbone | head) x (decay | no decay)."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name.startswith("head."), _no_weight_decay(name, param))
            groups.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "lr": recipe.lr * (recipe.head_lr_mult if is_head else 1.0),
            "weight_decay": 0.0 if no_decay else recipe.weight_decay,
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]


def build_optimizer(model: torch.nn.Module, recipe: TrainRecipe) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, recipe), lr=recipe.lr, betas=(0.9, 0.999))


def lr_factor(iteration: int, recipe: TrainRecipe) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based): poly decay x linear warm-up."""
    factor = (1.0 - iteration / recipe.iterations) ** recipe.poly_power
    if iteration < recipe.warmup_iters:
        factor *= 1.0 - (1.0 - iteration / recipe.warmup_iters) * (1.0 - recipe.warmup_ratio)
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainRecipe) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, recipe))


class Precision:
    """Autocast + (for fp16) gradient scaling; a no-op on CPU, where AMP only costs time."""

    def __init__(self, amp: str, device: torch.device) -> None:
        self.enabled = amp != "none" and device.type == "cuda"
        self.device_type = device.type
        self.dtype = torch.float16 if amp == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and amp == "fp16")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy at label resolution (logits come at 1/4 and are upsampled bilinearly)."""
    logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks, ignore_index=ignore_index)


# ------------------------------------------------------------------------------------- data stream
@contextlib.contextmanager
def isolated_rng(seed: int | None = None) -> Iterator[None]:
    """Run a block under its own seed (or none) and leave the global generators exactly as they were."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class StreamSampler(Sampler):
    """An endless, resumable stream of ``(index, sample_seed)`` for one rank.

    Epoch ``e`` is a permutation seeded by ``(seed, e)``; rank ``r`` takes every ``world_size``-th entry.
    ``start`` skips the samples this rank consumed before a resume, without drawing them.
    """

    def __init__(self, num_samples: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < world_size:
            raise UserError(f"the training set has {num_samples} samples, fewer than the {world_size} processes; use a larger dataset")
        self.num_samples, self.seed, self.start = num_samples, seed, start
        self.rank, self.world_size = rank, world_size
        self.per_rank = num_samples // world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        epoch, order = -1, None
        while True:
            current, offset = divmod(position, self.per_rank)
            if current != epoch:
                epoch = current
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(self.num_samples, generator=generator)[self.rank :: self.world_size].tolist()
            sample_seed = (self.seed * 2_654_435_761 + self.rank * 40_503 + position) % 2**62
            yield order[offset], sample_seed
            position += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a size hint
        return sys.maxsize


class SeededSamples(Dataset):
    """Applies each sample's loading and augmentation under the seed the sampler gave it."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, sample_seed = key
        with isolated_rng(sample_seed):
            return self.dataset[index]


def train_stream(dataset: Dataset, recipe: TrainRecipe, ctx: DistContext, start_iteration: int) -> Iterator:
    per_rank = recipe.batch_size // ctx.world_size
    sampler = StreamSampler(len(dataset), recipe.seed, start_iteration * per_rank, ctx.rank, ctx.world_size)
    loader = DataLoader(
        SeededSamples(dataset), batch_size=per_rank, sampler=sampler, num_workers=recipe.num_workers,
        pin_memory=ctx.device.type == "cuda", drop_last=True, persistent_workers=recipe.num_workers > 0,
        generator=torch.Generator().manual_seed(recipe.seed),  # keeps the global generator untouched
    )
    return iter(loader)


# --------------------------------------------------------------------------------------- the loop
# step(model, images, masks, precision, iteration) -> loss value; it runs forward and backward itself.
StepFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Precision, int], float]
EvalFn = Callable[[torch.nn.Module], dict[str, Any]]


def run_training(
    model: torch.nn.Module,
    recipe: TrainRecipe,
    out_dir: str | Path,
    train_set: Dataset,
    step: StepFn,
    *,
    evaluate: EvalFn | None = None,
    meta: dict[str, Any],
    resume: bool = False,
    ctx: DistContext | None = None,
    find_unused: bool = False,
    class_names: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Optimise ``model`` with ``step`` for ``recipe.iterations``; return the evaluation history.

    ``meta`` (e.g. config and recipe) is stored in the checkpoint; a resume refuses a different one.
    """
    ctx = ctx or init_distributed("auto")
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    if recipe.batch_size % ctx.world_size:
        raise UserError(f"batch_size {recipe.batch_size} is not divisible by {ctx.world_size} processes; use a multiple of the process count")
    if checkpoint_path.exists() and not resume:
        raise UserError(f"{out_dir} already holds a training run ({CHECKPOINT_FILE}); pass --resume to continue it or choose another --out")

    seed_everything(recipe.seed + ctx.rank)
    model.to(ctx.device)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    precision = Precision(recipe.amp, ctx.device)
    start, history = 0, []
    if resume:
        state = load_checkpoint(checkpoint_path, map_location=ctx.device)
        _check_resumable(state, meta, checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        precision.scaler.load_state_dict(state["scaler"])
        start, history = state["iteration"], state["history"]
        if len(state["rng"]) == ctx.world_size:
            set_rng_state(state["rng"][ctx.rank])
        else:
            log(f"note: checkpoint has RNG states of {len(state['rng'])} processes, this run has {ctx.world_size}; resume is not bit-exact")
        log(f"resumed from {checkpoint_path} at iteration {start}")
    trained = wrap_model(model, ctx, recipe.sync_bn, find_unused)
    stream = train_stream(train_set, recipe, ctx, start)
    last_saved = start if resume else None
    started, log_every = time.perf_counter(), max(1, recipe.iterations // 20)

    for iteration in range(start, recipe.iterations):
        trained.train()
        images, masks = next(stream)
        images, masks = images.to(ctx.device, non_blocking=True), masks.to(ctx.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss = step(trained, images, masks, precision, iteration)
        if not _all_finite(loss, ctx):
            where = f"{checkpoint_path} (iteration {last_saved}) is kept" if last_saved is not None else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"loss became {loss} at iteration {iteration + 1}; training stopped and {where}. "
                "Lower the learning rate, set grad_clip, use amp bf16 instead of fp16, or check the data for NaN/inf values"
            )
        if recipe.grad_clip is not None:
            precision.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trained.parameters(), recipe.grad_clip)
        precision.scaler.step(optimizer)
        precision.scaler.update()
        scheduler.step()
        done = iteration + 1
        if ctx.is_main and (done % log_every == 0 or done == recipe.iterations):
            rate = (done - start) / (time.perf_counter() - started)
            log(f"iter {done}/{recipe.iterations} loss {loss:.4f} lr {scheduler.get_last_lr()[0]:.3g} ({rate:.2f} it/s)")

        final = done == recipe.iterations
        if evaluate is not None and (final or _due(done, recipe.eval_interval)):
            history.append(_evaluate(model, evaluate, done, ctx, out_dir, class_names))
            if ctx.is_main:
                log("eval " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items() if isinstance(v, float)))
        if final or _due(done, recipe.checkpoint_interval):
            rng = all_gather_objects(rng_state(), ctx)
            if ctx.is_main:
                save_checkpoint(checkpoint_path, {
                    "format": "hrvit-nas-train", "iteration": done, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": precision.scaler.state_dict(), "rng": rng, "history": history, "meta": meta,
                })
            barrier(ctx)
            last_saved = done
    return history


def _due(done: int, interval: int) -> bool:
    return interval > 0 and done % interval == 0


def _all_finite(loss: float, ctx: DistContext) -> bool:
    finite = math.isfinite(loss)
    if ctx.enabled:
        flag = torch.tensor([float(finite)], device=ctx.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = bool(flag.item())
    return finite


def _check_resumable(state: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    if state.get("format") != "hrvit-nas-train":
        raise CheckpointError(f"{path} is not a hrvit-nas training checkpoint; resume only from <out>/{CHECKPOINT_FILE}")
    stored = state["meta"]
    differing = sorted(key for key in set(stored) | set(meta) if _comparable(stored.get(key), key) != _comparable(meta.get(key), key))
    if differing:
        raise CheckpointError(
            f"{path} was written by a run with a different {', '.join(differing)}; resume with the same config and recipe "
            f"(only {', '.join(RESUME_MAY_CHANGE)} may change) or train into a new --out"
        )


def _comparable(value: Any, key: str) -> Any:
    if key == "recipe" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in RESUME_MAY_CHANGE}
    return value


def _evaluate(model: torch.nn.Module, evaluate: EvalFn, done: int, ctx: DistContext, out_dir: Path,
              class_names: list[str] | None) -> dict[str, Any]:
    """Evaluate on the main process (outside the training RNG stream) and write metrics JSON/CSV."""
    record: dict[str, Any] = {}
    if ctx.is_main:
        was_training = model.training
        model.eval()
        with isolated_rng(), torch.no_grad():
            metrics = evaluate(model)
        model.train(was_training)
        record = {"iteration": done, **{k: _plain(v) for k, v in metrics.items()}}
        write_metrics(out_dir, record, class_names)
    record = all_gather_objects(record, ctx)[0]
    return record


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.dim() else value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_metrics(out_dir: Path, record: dict[str, Any], class_names: list[str] | None = None) -> None:
    """metrics.json: the latest evaluation (summary and per class); metrics.csv: its per-class table;
    eval_history.csv: one row of scalar metrics per evaluation so far."""
    from training.bundle import METRICS_FILE
    from training.metrics import metrics_to_json_dict
    from training.metrics import write_metrics as write_class_table

    document = record
    if "per_class_iou" in record:
        document = {"iteration": record["iteration"], **metrics_to_json_dict(record, class_names)}
        write_class_table(record, csv_path=out_dir / "metrics.csv", class_names=class_names)
    atomic_write_text(out_dir / METRICS_FILE, json.dumps(document, indent=2) + "\n")
    scalars = {"iteration": record["iteration"], **{k: v for k, v in record.items() if isinstance(v, float)}}
    history_path = out_dir / HISTORY_FILE
    previous = history_path.read_text() if history_path.is_file() else ""
    rows = list(csv.DictReader(io.StringIO(previous))) if previous else []
    rows = [row for row in rows if int(row["iteration"]) < record["iteration"]] + [scalars]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(scalars), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(history_path, buffer.getvalue())


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
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``config`` with ``recipe`` into ``out_dir``; return the final evaluation metrics.

    ``out_dir`` ends up an export bundle (config.yaml, train.yaml, weights.pt, metrics.json) plus
    ``checkpoint.pt`` and ``eval_history.csv``. ``train_set`` / ``val_set`` replace the recipe's dataset
    (for custom datasets in Python).
    """
    from hrvit_space.model import HRViT
    from training.bundle import CONFIG_FILE, RECIPE_FILE, WEIGHTS_FILE
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
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / CONFIG_FILE)
        recipe.save(out_dir / RECIPE_FILE)

    def step(trained: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, precision: Precision, iteration: int) -> float:
        with precision.autocast():
            logits = trained(images)
        loss = segmentation_loss(logits, masks, spec.ignore_index)
        precision.backward(loss)
        return loss.item()

    evaluate = make_evaluator(val_set, spec, recipe, ctx.device)
    meta = {"config": config.to_dict(), "recipe": recipe.to_dict()}
    history = run_training(model, recipe, out_dir, train_set, step, evaluate=evaluate, meta=meta, resume=resume, ctx=ctx,
                           class_names=getattr(val_set, "class_names", None), log=log)
    if ctx.is_main:
        save_checkpoint(out_dir / WEIGHTS_FILE, model.state_dict())
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
    from training.data.transforms import train_transform

    return build_dataset(spec, "train", transform=train_transform(recipe.crop_size, ignore_index=spec.ignore_index))


def build_val_set(spec) -> Dataset:
    from training.data import build_dataset
    from training.data.transforms import eval_transform

    return build_dataset(spec, "val", transform=eval_transform())


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
    from hrvit_space.reference import reference_key

    state = load_checkpoint(path)
    if isinstance(state, dict) and state.get("format") in ("hrvit-nas-train", "hrvit-nas-supernet"):
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

    from hrvit_space.model import Block

    for block in (m for m in model.modules() if isinstance(m, Block)):
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
