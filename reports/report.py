"""``write_report``: every figure, table and the HTML page of one study, from its storage alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hrvit_nas import UserError, atomic_write_text
from reports.html import render_html
from reports.plots import render_figures
from reports.study_data import StudyData
from reports.tables import report_tables, write_tables


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    figures: dict[str, list[Path]]
    tables: dict[str, list[Path]]


def write_report(data: StudyData, out_dir: str | Path) -> ReportFiles:
    """Write ``figures/``, ``tables/`` and ``report.html`` under ``out_dir`` (files are replaced atomically)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {str(out_dir)!r} is a file (or lies under one); give a directory for the report") from None
    except OSError as error:
        raise UserError(f"--out {str(out_dir)!r}: cannot create it ({error.strerror}); choose a writable directory") from None
    figures = render_figures(data, out_dir / "figures")
    tables = write_tables(data, out_dir / "tables")
    page = out_dir / "report.html"
    atomic_write_text(page, render_html(data, figures, report_tables(data)))
    return ReportFiles(page, figures, tables)
