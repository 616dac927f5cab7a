"""Inspection tools: the NaN guard (activation watch, edited-weight tracking, guarded editing, reports).

Everything here returns data; only ``nan_guard.main`` (the command line) prints. The EasyEdit-dependent
runners (``mend_run``, ``liveedit_run``, ``nan_guard``) are imported from their modules.
"""

from .guard import ExpertRollback, GuardedEdit, GuardReport, WeightRollback, rollback_for, run_guarded
from .report import EditRecord, Failure, RunReport, format_table, plot_norm_history, write_json
from .sequence import run_sequence
from .watch import ActivationWatch, ModuleRecord, WatchResult, all_finite, headroom, max_abs
from .weights import WeightStat, WeightTracker, first_nonfinite_index, weight_stat

__all__ = [
    "ActivationWatch",
    "EditRecord",
    "Failure",
    "RunReport",
    "format_table",
    "plot_norm_history",
    "run_sequence",
    "write_json",
    "ExpertRollback",
    "GuardReport",
    "GuardedEdit",
    "ModuleRecord",
    "WatchResult",
    "WeightRollback",
    "WeightStat",
    "WeightTracker",
    "all_finite",
    "first_nonfinite_index",
    "headroom",
    "max_abs",
    "rollback_for",
    "run_guarded",
    "weight_stat",
]
