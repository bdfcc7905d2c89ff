"""Where a training run's numbers go, so a long run can be watched and its curves read back.

- ``train_log.csv``: every ``log_interval`` iterations the mean loss over the interval, the learning rate,
  throughput and peak memory (always written; the loss curve survives the terminal).
- ``eval_history.csv``: one row per evaluation (mIoU, accuracies, IoU per class); ``metrics.json`` and
  ``metrics.csv``: the latest evaluation in full.
- ``tensorboard/``: the same scalars as event files, when the optional ``tensorboard`` package is installed.
- A rich progress bar with ETA and it/s on an interactive terminal.

A resumed run first cuts every log back to its checkpoint's iteration, so the files of an interrupted
and resumed run hold the same rows as those of an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from hrvit_nas import atomic_write_text

TRAIN_LOG_FILE = "train_log.csv"
HISTORY_FILE = "eval_history.csv"
TENSORBOARD_DIR = "tensorboard"
TRAIN_COLUMNS = ("iteration", "loss", "lr", "iterations_per_s", "images_per_s", "memory_mib")


class RunLog:
    """Feeds the progress bar, the CSV logs and TensorBoard; inactive on every process but the main one."""

    def __init__(self, out_dir: Path, total: int, start: int, batch_size: int, *, active: bool, progress: bool,
                 interval: int, window: list[float] | None = None, class_names: list[str] | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.out_dir, self.total, self.batch_size, self.interval = out_dir, total, batch_size, interval
        self.active, self.class_names, self.log = active, class_names, log
        self.window = list(window or [])  # losses since the last row; the checkpoint keeps it for resume
        self.window_started, self.window_timed = time.perf_counter(), 0  # a restored window was timed by another process
        self.started, self.start = time.perf_counter(), start
        self.print_every = max(1, total // 20)
        self.writer, self.progress = None, None
        if not active:
            return
        _cut_csv(out_dir / TRAIN_LOG_FILE, start, TRAIN_COLUMNS)
        self.writer = _tensorboard_writer(out_dir / TENSORBOARD_DIR, start)
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                     TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=Console(stderr=True))  # stdout stays the run's JSON summary
            self.task = self.progress.add_task("train", total=total, completed=start, stats="")
            self.progress.start()

    def state(self) -> list[float]:
        """What a checkpoint stores so the resumed run's next row averages the same losses."""
        return list(self.window)

    def step(self, done: int, loss: float, lr: float, device: torch.device) -> None:
        self.window.append(loss)
        self.window_timed += 1
        if not self.active:
            return
        final = done == self.total
        if done % self.interval == 0 or final:
            rate = self.window_timed / max(time.perf_counter() - self.window_started, 1e-9)
            row = {"iteration": done, "loss": sum(self.window) / len(self.window), "lr": lr, "iterations_per_s": rate,
                   "images_per_s": rate * self.batch_size, "memory_mib": peak_memory_mib(device)}
            _append_csv(self.out_dir / TRAIN_LOG_FILE, row, TRAIN_COLUMNS)
            if self.writer is not None:
                for key, value in row.items():
                    if key != "iteration" and value is not None:
                        self.writer.add_scalar(f"train/{key}", value, done)
            self.window, self.window_started, self.window_timed = [], time.perf_counter(), 0
        rate = (done - self.start) / max(time.perf_counter() - self.started, 1e-9)
        if self.progress is not None:
            self.progress.update(self.task, completed=done, stats=f"loss {loss:.4f}  lr {lr:.3g}  {rate:.2f} it/s")
        if done % self.print_every == 0 or final:
            self.log(f"iter {done}/{self.total} loss {loss:.4f} lr {lr:.3g} ({rate:.2f} it/s)")

    def evaluation(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        write_metrics(self.out_dir, record, self.class_names)
        if self.writer is not None:
            for key, value in eval_scalars(record, self.class_names).items():
                if key != "iteration" and not math.isnan(value):  # per-class IoU gets its own TensorBoard group
                    tag = f"val_iou/{key.removeprefix('iou.')}" if key.startswith("iou.") else f"val/{key}"
                    self.writer.add_scalar(tag, value, record["iteration"])
            self.writer.flush()
        self.log("eval " + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float)))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()


def peak_memory_mib(device: torch.device) -> float | None:
    """CUDA: peak memory allocated for tensors; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # not on Unix: no portable peak-RSS reading
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _tensorboard_writer(directory: Path, start: int):
    """A SummaryWriter when ``tensorboard`` is installed; ``purge_step`` drops events a resume replays."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra is not installed: the CSV logs are the record
        return None
    return SummaryWriter(str(directory), purge_step=start + 1 if start else None)


def eval_scalars(record: dict[str, Any], class_names: list[str] | None = None) -> dict[str, float]:
    """The scalar metrics of one evaluation, with the per-class IoU spread into ``iou.<class>``."""
    scalars = {"iteration": record["iteration"], **{k: v for k, v in record.items() if isinstance(v, float)}}
    per_class = record.get("per_class_iou")
    if per_class is not None:
        names = class_names if class_names is not None and len(class_names) == len(per_class) else range(len(per_class))
        scalars.update({f"iou.{name}": value for name, value in zip(names, per_class)})
    return scalars


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
    scalars = eval_scalars(record, class_names)
    history_path = out_dir / HISTORY_FILE
    rows = [row for row in _read_csv(history_path) if int(row["iteration"]) < record["iteration"]] + [scalars]
    atomic_write_text(history_path, _csv_text(rows, list(scalars)))


def _read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text()))) if path.is_file() else []


def _csv_text(rows: list[dict[str, Any]], columns: list[str] | tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cut_csv(path: Path, last_iteration: int, columns: tuple[str, ...]) -> None:
    """Keep the rows up to ``last_iteration`` (a fresh run: none), atomically."""
    rows = [row for row in _read_csv(path) if int(row["iteration"]) <= last_iteration]
    atomic_write_text(path, _csv_text(rows, columns))


def _append_csv(path: Path, row: dict[str, Any], columns: tuple[str, ...]) -> None:
    """One appended, flushed line per row: a log grows for 160k iterations, so it is not rewritten each time."""
    with open(path, "a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n").writerow(
            {key: "" if value is None else value for key, value in row.items()})
