"""Compatibility with the EasyEdit targets, split by purpose.

- ``imports``: fixes without which easyeditor cannot be imported; applied by ``import easyedit_liveedit``.
- ``devices``: ``cuda_to_cpu()``, EasyEdit's hard-coded CUDA devices on a machine without CUDA.
- ``baselines``: ``baseline_fixes()``, changes to EasyEdit's own MEND, SERAC and IKE, applied only by the harness.
"""

from .baselines import baseline_fixes
from .devices import cuda_to_cpu
from .imports import apply

__all__ = ["apply", "baseline_fixes", "cuda_to_cpu"]
