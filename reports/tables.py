"""Trial tables (all trials, the feasible Pareto front) as CSV, Markdown and, with pyarrow, Parquet.

Column names carry their unit (``latency_ms``, ``energy_mj``, ``params_m``, ``gflops``), as in
``search.records.trials_frame``. Markdown leaves out the long config JSON; CSV and Parquet keep it, so
every config can be rebuilt from the table alone.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pandas as pd

from hrvit_nas import atomic_path, atomic_write_text
from reports.study_data import StudyData

MARKDOWN_DROPS = ("config_json",)


def report_tables(data: StudyData) -> dict[str, pd.DataFrame]:
    return {"trials": _clean(data.trials), "pareto": _clean(data.pareto)}


def write_tables(data: StudyData, out_dir: Path) -> dict[str, list[Path]]:
    """Write ``trials.*`` and ``pareto.*``; returns {table name: paths}."""
    written: dict[str, list[Path]] = {}
    for name, frame in report_tables(data).items():
        paths = [out_dir / f"{name}.csv", out_dir / f"{name}.md"]
        atomic_write_text(paths[0], frame.to_csv(index=False, lineterminator="\n"))
        atomic_write_text(paths[1], to_markdown(frame) + "\n")
        if parquet_available():
            paths.append(out_dir / f"{name}.parquet")
            with atomic_path(paths[-1]) as tmp:
                frame.to_parquet(tmp, index=False)
        written[name] = paths
    return written


def to_markdown(frame: pd.DataFrame) -> str:
    shown = frame.drop(columns=[c for c in MARKDOWN_DROPS if c in frame])
    if shown.empty:
        return "(no trials)"
    buffer = io.StringIO()
    shown.to_markdown(buffer, index=False, floatfmt=".4g")
    return buffer.getvalue()


def parquet_available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    """Trial-number order and scalar cells only (nested values become JSON-like strings)."""
    frame = frame.sort_values("number").reset_index(drop=True)
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, (dict, list))).any():
            frame[column] = frame[column].map(lambda v: v if not isinstance(v, (dict, list)) else str(v))
    return frame
