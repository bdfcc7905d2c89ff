"""Reports (Pareto plots, tables, a self-contained HTML page) and export bundles for full training.

Everything reads a study through ``search.records``; ``hrvit-nas report`` and ``hrvit-nas export`` are
the command-line faces of ``write_report`` and ``export_trials``. Exports load lazily, so that
``hrvit-nas --help`` (which imports ``reports.cli``) does not import torch or matplotlib.
"""

import importlib

_EXPORTS = {
    "ExportError": "reports.export",
    "ExportOptions": "reports.export",
    "export_trials": "reports.export",
    "ReportFiles": "reports.report",
    "write_report": "reports.report",
    "Selector": "reports.selectors",
    "SelectorError": "reports.selectors",
    "parse_selector": "reports.selectors",
    "select": "reports.selectors",
    "StudyData": "reports.study_data",
    "load_study_data": "reports.study_data",
    "study_data": "reports.study_data",
}
__all__ = [
    "ExportError", "ExportOptions", "ReportFiles", "Selector", "SelectorError", "StudyData", "export_trials",
    "load_study_data", "parse_selector", "select", "study_data", "write_report",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'reports' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
