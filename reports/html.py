"""One self-contained HTML page: figures inlined as base64 PNG, tables, device fingerprint, settings.

No external CSS, scripts or fonts, so the file opens from disk (or an e-mail attachment) without a server.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from reports.study_data import StudyData
from reports.tables import MARKDOWN_DROPS

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f4f4f4; }
.scroll { overflow-x: auto; }
table.settings td { text-align: left; font-family: ui-monospace, monospace; }
"""


def render_html(data: StudyData, figures: dict[str, list[Path]], tables: dict[str, pd.DataFrame]) -> str:
    """The report page; ``figures`` maps a figure name to its files (the PNG is embedded)."""
    complete, feasible = data.complete, data.feasible
    summary = (
        f"{len(data.trials)} trials: {len(complete)} complete, {len(feasible)} feasible, "
        f"{len(data.pareto)} on the feasible Pareto front."
    )
    sections = [
        f"<h1>hrvit-nas report: {html.escape(data.name)}</h1>",
        f"<p>{html.escape(summary)}</p>",
        "<h2>Figures</h2>",
    ]
    for name, paths in figures.items():
        png = next(p for p in paths if p.suffix == ".png")
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
        sections.append(f'<h3>{html.escape(name)}</h3>\n<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">')
    for name, frame in tables.items():
        shown = frame.drop(columns=[c for c in MARKDOWN_DROPS if c in frame])
        table = shown.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
        sections.append(f'<h2>Table: {html.escape(name)}</h2>\n<div class="scroll">{table}</div>')
    sections.append("<h2>Device fingerprint</h2>")
    sections += [_key_value_table(fingerprint) for fingerprint in fingerprints(data)] or ["<p>(no trial recorded a fingerprint)</p>"]
    sections.append("<h2>Study settings</h2>")
    sections.append(_key_value_table(data.settings))
    sections.append(_download_link(data.settings, "settings.json"))
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>hrvit-nas report: {html.escape(data.name)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def fingerprints(data: StudyData) -> list[dict[str, Any]]:
    """Distinct device fingerprints of the complete trials (one, unless workers ran on several devices)."""
    seen: dict[str, dict[str, Any]] = {}
    for trial in data.study.get_trials(deepcopy=False):
        fingerprint = trial.user_attrs.get("fingerprint")
        if fingerprint:
            seen.setdefault(json.dumps(fingerprint, sort_keys=True), fingerprint)
    return list(seen.values())


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, text) rows: mappings and lists of mappings unfold, other lists stay one compact cell."""
    if isinstance(value, dict) and value:
        return [row for key in sorted(value) for row in flatten(value[key], f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [row for i, item in enumerate(value) for row in flatten(item, f"{prefix}[{i}]")]
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "), default=str)
    return [(prefix, text)]


def _key_value_table(value: dict[str, Any]) -> str:
    frame = pd.DataFrame(flatten(value), columns=["key", "value"])
    return f'<div class="scroll">{frame.to_html(index=False, border=0, classes="settings")}</div>'


def _download_link(value: Any, file_name: str) -> str:
    """The exact JSON, for scripts: a data URI keeps the page self-contained."""
    encoded = base64.b64encode(json.dumps(value, indent=2, sort_keys=True, default=str).encode()).decode("ascii")
    return f'<p><a download="{file_name}" href="data:application/json;base64,{encoded}">Download {file_name}</a></p>'
