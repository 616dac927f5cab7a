"""Fixes without which easyeditor cannot be imported on a modern stack: applied by ``import easyedit_liveedit``.

Each fix detects the behaviour it covers and does nothing where that behaviour is absent, says what it covers,
and has a test per EasyEdit target that fails if it stops working or stops being needed. None of them changes
what an EasyEdit editor computes (those fixes live in ``baselines.py`` and apply only inside the harness).
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from typing import Any

import torch

LOG = logging.getLogger(__name__)

# --- torchvision: torchvision from PyPI next to the CPU torch ----------------------------------------------------
# PyPI's torchvision wheel is built against CUDA torch; beside torch's CPU build its C++ ops fail to load, and
# `torchvision._meta_registrations` then raises "operator torchvision::nms does not exist" at import. Because
# transformers and timm import torchvision whenever it is installed, that breaks easyeditor's import too.
# Declaring the two op schemas the meta registrations look up (nms, qnms) lets the import finish; calling
# these ops still fails loudly (nothing in EasyEdit's multimodal path calls them).
_TORCHVISION_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_torchvision_library: list[torch.library.Library] = []  # keeps the schema registration alive


def _declare_torchvision_ops() -> bool:
    """Import torchvision, declaring its missing op schemas first if the CPU/CUDA mismatch requires it.

    Returns True when the schemas had to be declared.
    """
    try:
        importlib.import_module("torchvision")
        return False
    except RuntimeError as error:
        if "torchvision::nms does not exist" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # drop the half-imported package before trying again
    if not _torchvision_library:
        library = torch.library.Library("torchvision", "FRAGMENT")
        for name, schema in _TORCHVISION_SCHEMAS.items():
            if not torch._C._dispatch_has_kernel(f"torchvision::{name}"):
                library.define(schema)
        _torchvision_library.append(library)
    importlib.import_module("torchvision")
    LOG.debug("declared torchvision::nms/qnms schemas so the CUDA torchvision wheel imports beside CPU torch")
    return True


# --- transformers: Q-Former helpers that moved out of transformers.modeling_utils ---------------------------------
# EasyEdit's copied Q-Former (`trainer/blip2_models/Qformer.py`) imports `apply_chunking_to_forward`,
# `find_pruneable_heads_and_indices` and `prune_linear_layer` from `transformers.modeling_utils`; since
# transformers 4.4x they live only in `transformers.pytorch_utils`.
_MOVED_TO_PYTORCH_UTILS = ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer")


def _restore_moved_transformers_helpers() -> list[str]:
    """Re-export the moved helpers under their old module; returns the names that were missing."""
    import transformers.modeling_utils as modeling_utils
    import transformers.pytorch_utils as pytorch_utils

    missing = [
        name for name in _MOVED_TO_PYTORCH_UTILS if not hasattr(modeling_utils, name) and hasattr(pytorch_utils, name)
    ]
    for name in missing:
        setattr(modeling_utils, name, getattr(pytorch_utils, name))
    return missing


# --- easyeditor: subpackages shadowed by easyeditor's star imports ------------------------------------------------
# `easyeditor/__init__` star-imports every method package; `easyeditor.models.ike` exports a module named
# `util`, which overwrites the attribute `easyeditor.util`. Then `import easyeditor.util.alg_dict as d` (the
# way users reach ALG_MULTIMODAL_DICT) fails with "cannot import name 'alg_dict' from
# 'easyeditor.models.ike.util'". Point the attribute back at the real subpackage.
def _unshadow_easyeditor_util() -> bool:
    """Re-bind ``easyeditor.util`` to the ``easyeditor.util`` package; returns True if it was shadowed."""
    easyeditor = sys.modules["easyeditor"]
    util = importlib.import_module("easyeditor.util")
    shadowed = easyeditor.util is not util
    easyeditor.util = util
    return shadowed


_applied: dict[str, Any] = {}


def apply() -> dict[str, Any]:
    """Apply the import fixes (idempotent) and import easyeditor; returns what each fix did.

    Call this before importing anything from easyeditor; ``import easyedit_liveedit`` does it.
    """
    if _applied:
        return _applied
    _applied["torchvision_ops_declared"] = _declare_torchvision_ops()
    _applied["transformers_helpers_restored"] = _restore_moved_transformers_helpers()
    with warnings.catch_warnings():
        # easyeditor imports timm's pre-1.0 module paths; timm answers each with a FutureWarning meant for
        # easyeditor's authors, not for our users.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\..*")
        importlib.import_module("easyeditor")
    _applied["easyeditor_util_unshadowed"] = _unshadow_easyeditor_util()
    return _applied
