"""The optimisation loop that full and supernet training share: checkpoints, exact resume, stopping.

- ``checkpoint.pt`` (the resume point) every ``checkpoint_interval`` iterations, at the end, and when
  SIGINT/SIGTERM arrive: the current iteration finishes, is saved, and the run exits with 128 + signal.
- ``best.pt``: the weights of the evaluation with the highest validation mIoU so far.
- ``--keep-last N``: also keep the last N checkpoints as ``iter_<n>.pt``.
- Exact resume: a checkpoint holds model, optimizer, scheduler, scaler, every process's RNG states,
  the evaluation history, the best score and the partial log window, all as plain data.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from hrvit_nas import UserError
from training.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from training.distributed import DistContext, all_gather_objects, barrier, init_distributed, wrap_model
from training.optim import Precision, build_optimizer, build_scheduler
from training.recipe import TrainRecipe
from training.run_log import RunLog
from training.stream import isolated_rng, train_stream

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
TRAIN_FORMAT = "hrvit-nas-train"
BEST_FORMAT = "hrvit-nas-best"
# Recipe fields that do not change the computed result, so a resume may change them.
RESUME_MAY_CHANGE = ("num_workers", "eval_interval", "checkpoint_interval")

# step(model, images, masks, precision, iteration) -> loss value; it runs forward and backward itself.
StepFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Precision, int], float]
EvalFn = Callable[[torch.nn.Module], dict[str, Any]]


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(UserError):
    """SIGINT or SIGTERM stopped the run after saving it; the exit status is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopOnSignal:
    """SIGINT/SIGTERM only raise a flag, so the loop ends the current iteration and saves; a second
    SIGINT aborts at once (the usual escape when saving hangs)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if self.enabled and threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum


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
    keep_last: int = 0,
    log_interval: int = 50,
    progress: bool = False,
    save_on_signal: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Optimise ``model`` with ``step`` for ``recipe.iterations``; return the evaluation history.

    ``meta`` (e.g. config and recipe) is stored in the checkpoint; a resume refuses a different one.
    ``save_on_signal`` is for runs worth resuming; a throw-away run inside another tool (a short-train
    estimator in a search) leaves Ctrl-C to that tool.
    """
    ctx = ctx or init_distributed("auto")
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_FILE
    if recipe.batch_size % ctx.world_size:
        raise UserError(f"batch_size {recipe.batch_size} is not divisible by {ctx.world_size} processes; use a multiple of the process count")
    if checkpoint_path.exists() and not resume:
        raise UserError(f"{out_dir} already holds a training run ({CHECKPOINT_FILE}); pass --resume to continue it or choose another --out")
    if keep_last < 0 or log_interval < 1:
        raise UserError(f"keep_last {keep_last} / log_interval {log_interval}: use keep_last >= 0 and log_interval >= 1")

    seed_everything(recipe.seed + ctx.rank)
    model.to(ctx.device)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    precision = Precision(recipe.amp, ctx.device)
    start, history, best, window = 0, [], None, []
    if resume:
        state = load_checkpoint(checkpoint_path)  # on the CPU: RNG states must stay there; weights are copied over
        _check_resumable(state, meta, checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        precision.scaler.load_state_dict(state["scaler"])
        start, history, best, window = state["iteration"], state["history"], state["best"], state["log_window"]
        if len(state["rng"]) == ctx.world_size:
            set_rng_state(state["rng"][ctx.rank])
        else:
            log(f"note: checkpoint has RNG states of {len(state['rng'])} processes, this run has {ctx.world_size}; resume is not bit-exact")
        log(f"resumed from {checkpoint_path} at iteration {start}")
    trained = wrap_model(model, ctx, recipe.sync_bn, find_unused)
    stream = train_stream(train_set, recipe, ctx, start)
    run_log = RunLog(out_dir, recipe.iterations, start, recipe.batch_size, active=ctx.is_main, progress=progress,
                     interval=log_interval, window=window, class_names=class_names, log=log)
    last_saved = start if resume else None

    with StopOnSignal(save_on_signal) as signals, contextlib.closing(run_log):
        for iteration in range(start, recipe.iterations):
            trained.train()
            images, masks = next(stream)
            images, masks = images.to(ctx.device, non_blocking=True), masks.to(ctx.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = step(trained, images, masks, precision, iteration)
            finite, stopping = _agree(loss, signals.signum is not None, ctx)
            if not finite:
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
            run_log.step(done, loss, scheduler.get_last_lr()[0], ctx.device)

            final = done == recipe.iterations
            if evaluate is not None and (final or _due(done, recipe.eval_interval)):
                history.append(_evaluate(model, evaluate, done, ctx))
                run_log.evaluation(history[-1])
                best = _keep_best(model, history[-1], best, meta, out_dir, ctx)
            if final or stopping or _due(done, recipe.checkpoint_interval):
                rng = all_gather_objects(rng_state(), ctx)
                if ctx.is_main:
                    save_checkpoint(checkpoint_path, {
                        "format": TRAIN_FORMAT, "iteration": done, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": precision.scaler.state_dict(), "rng": rng, "history": history, "meta": meta,
                        "best": best, "log_window": run_log.state(),
                    })
                    _keep_last(out_dir, done, keep_last)
                barrier(ctx)
                last_saved = done
            if stopping and not final:
                name = signal.Signals(signals.signum).name if signals.signum else "a signal on another process"
                raise TrainingInterrupted(
                    f"stopped by {name} after iteration {done}/{recipe.iterations}; {checkpoint_path} holds the run: "
                    "continue it with the same command plus --resume", signals.signum or signal.SIGTERM)
    return history


def _due(done: int, interval: int) -> bool:
    return interval > 0 and done % interval == 0


def _agree(loss: float, stop: bool, ctx: DistContext) -> tuple[bool, bool]:
    """(every process's loss is finite, some process was asked to stop): one all-reduce per iteration."""
    finite = math.isfinite(loss)
    if ctx.enabled:
        flags = torch.tensor([float(finite), float(not stop)], device=ctx.device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MIN)
        finite, stop = bool(flags[0].item()), not bool(flags[1].item())
    return finite, stop


def _keep_best(model: torch.nn.Module, record: dict[str, Any], best: dict[str, Any] | None, meta: dict[str, Any],
               out_dir: Path, ctx: DistContext) -> dict[str, Any] | None:
    """Write ``best.pt`` when this evaluation's mIoU beats every earlier one; return the best so far."""
    miou = record.get("miou")
    if not isinstance(miou, float) or math.isnan(miou) or (best is not None and miou <= best["miou"]):
        return best
    best = {"miou": miou, "iteration": record["iteration"]}
    if ctx.is_main:
        save_checkpoint(out_dir / BEST_FILE, {"format": BEST_FORMAT, **best, "model": model.state_dict(), "meta": meta})
    return best


def _keep_last(out_dir: Path, done: int, keep_last: int) -> None:
    """Link the fresh checkpoint as ``iter_<done>.pt`` and delete all but the newest ``keep_last`` of those."""
    if keep_last == 0:
        return
    snapshot = out_dir / f"iter_{done:07d}.pt"
    snapshot.unlink(missing_ok=True)
    os.link(out_dir / CHECKPOINT_FILE, snapshot)  # checkpoint.pt is replaced by rename, so the link keeps this one
    for old in sorted(out_dir.glob("iter_*.pt"))[:-keep_last]:
        old.unlink()


def _check_resumable(state: Any, meta: dict[str, Any], path: Path) -> None:
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT or "log_window" not in state:
        raise CheckpointError(f"{path} is not a hrvit-nas training checkpoint of this version; resume only from <out>/{CHECKPOINT_FILE}")
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


def _evaluate(model: torch.nn.Module, evaluate: EvalFn, done: int, ctx: DistContext) -> dict[str, Any]:
    """Evaluate on the main process, outside the training RNG stream; every process gets the record."""
    record: dict[str, Any] = {}
    if ctx.is_main:
        was_training = model.training
        model.eval()
        with isolated_rng(), torch.no_grad():
            metrics = evaluate(model)
        model.train(was_training)
        record = {"iteration": done, **{k: _plain(v) for k, v in metrics.items()}}
    return all_gather_objects(record, ctx)[0]


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, torch.Tensor):
        return value.tolist() if value.dim() else value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
