"""Inspection tools: the NaN guard (activation watch, edited-weight tracking, guarded editing, reports).

Everything here returns data; only ``nan_guard.main`` (the command line) prints.
"""

from .guard import ExpertRollback, GuardedEdit, GuardReport, WeightRollback, rollback_for, run_guarded
from .watch import ActivationWatch, ModuleRecord, WatchResult, all_finite, headroom, max_abs
from .weights import WeightStat, WeightTracker, first_nonfinite_index, weight_stat

__all__ = [
    "ActivationWatch",
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
