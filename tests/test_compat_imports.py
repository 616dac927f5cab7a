"""Each import fix (``easyedit/compat/imports.py``) has two tests: it still works, and it is still needed (remove the
fix when the second fails)."""

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import torch

import easyedit_liveedit  # noqa: F401  (applies the import fixes)
from easyedit_liveedit.easyedit.compat import imports


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


# 1. torchvision beside the CPU torch
def test_torchvision_import_still_fails_without_the_shim():
    result = _python("import torchvision")
    assert result.returncode != 0
    assert "torchvision::nms does not exist" in result.stderr


def test_torchvision_imports_and_transforms_work_with_the_shim():
    assert imports.apply()["torchvision_ops_declared"] is True
    from torchvision import transforms

    image = torch.rand(3, 8, 8)
    assert transforms.Resize((4, 4), antialias=True)(image).shape == (3, 4, 4)


# 2. Q-Former helpers moved to transformers.pytorch_utils
def test_qformer_helpers_still_missing_from_modeling_utils():
    # Read the source rather than importing it: importing transformers.modeling_utils pulls in torchvision.
    source = Path(importlib.util.find_spec("transformers.modeling_utils").origin).read_text()
    for name in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        assert not re.search(rf"\b{name}\b", source), f"transformers.modeling_utils has {name} again"


def test_easyeditor_qformer_imports_with_the_moved_helpers():
    qformer = importlib.import_module("easyeditor.trainer.blip2_models.Qformer")
    import transformers.pytorch_utils as pytorch_utils

    assert qformer.apply_chunking_to_forward is pytorch_utils.apply_chunking_to_forward


# 6. easyeditor.util shadowed by a star import
def test_ike_package_still_exports_a_util_module():
    ike = importlib.import_module("easyeditor.models.ike")
    assert ike.util is not sys.modules["easyeditor.util"]
    assert imports.apply()["easyeditor_util_unshadowed"] is True


def test_easyeditor_util_alg_dict_imports_after_the_plugin():
    result = _python("import easyedit_liveedit, easyeditor.util.alg_dict as d; print(sorted(d.ALG_MULTIMODAL_DICT))")
    assert result.returncode == 0, result.stderr
    assert "['IKE', 'LiveEdit', 'MEND', 'SERAC', 'SERAC_MULTI']" in result.stdout


def test_apply_is_idempotent():
    assert imports.apply() is imports.apply()
