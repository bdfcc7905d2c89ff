"""Reports (Pareto plots, tables, a self-contained HTML page) and export bundles for full training.

Everything reads a study through the ``search`` face; ``hrvit-nas report`` and ``hrvit-nas export``
are the command-line faces of ``write_report`` and ``export_trials``. Exports load lazily
(hrvit_nas.lazy_exports), so that ``hrvit-nas --help`` (which imports ``reports.cli``) does not
import torch or matplotlib.
"""

from hrvit_nas import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "reports.export": ("ExportError", "ExportOptions", "export_trials"),
    "reports.report": ("ReportFiles", "write_report"),
    "reports.selectors": ("Selector", "SelectorError", "parse_selector", "select"),
    "reports.study_data": ("StudyData", "load_study_data", "study_data"),
})
