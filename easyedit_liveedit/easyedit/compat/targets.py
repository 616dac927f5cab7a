"""What differs between the two EasyEdit targets (the PyPI wheel 0.0.1.dev0 and EasyEdit's GitHub main), behind one
function each, so the rest of the plugin calls the same code on both.

Each function detects the behaviour it bridges (a signature, an attribute, the shape of a result), never a version
number, and takes the wheel's path or main's accordingly. None of them changes EasyEdit: they only choose how the
plugin calls it or reads what it returns.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

LOG = logging.getLogger(__name__)


# --- Image processors: a PIL image (wheel) or a file path (main) --------------------------------------------------
# The wheel's `BlipImageEvalProcessor.__call__(item)` transforms a PIL image; main's `__call__(item, file_type=None)`
# opens the file itself (`Image.open(item)`), as main's datasets and editor call it.
def process_image(processor: Callable[..., torch.Tensor], path: str | Path) -> torch.Tensor:
    """``processor`` (EasyEdit's BLIP image processor) applied to the image file at ``path``, on either target."""
    if "file_type" in inspect.signature(processor.__call__).parameters:
        return processor(str(path), file_type="image")
    from PIL import Image

    with Image.open(path) as image:
        return processor(image.convert("RGB"))


# --- Locality outputs: answer tokens (wheel) or the whole sequence (main) -----------------------------------------
# The wheel's `compute_multimodal_edit_results` returns, as `locality_output` / `multimodal_locality_output`, the
# argmax token ids at the positions that predict the locality answer, and its `compute_multimodal_edit_quality` (which
# IKE's scoring returns) the same ids. Main's returns the logits of every position of the sequence (image tokens and
# question included), scored with its own top-k match over all positions, and main's `compute_multimodal_edit_quality`
# the argmax ids of every position (zero off the answer). The plugin keeps one definition of locality on both targets
# (the share of answer tokens whose argmax is unchanged from the unedited model): `answer_tokens` turns main's outputs
# into the wheel's form.
def answer_tokens(output: Any, num_answer_tokens: int) -> Any:
    """The argmax ids ``(B, num_answer_tokens)`` at the positions that predict the answer's tokens.

    Args:
        output: a locality output of EasyEdit's metric code, for a sequence whose text ends with the answer: the
            answer's argmax ids (the wheel: returned as they are), the argmax ids of every position (main's
            ``compute_multimodal_edit_quality``) or the logits ``(B, T, V)`` of every position (main's
            ``compute_multimodal_edit_results``).
        num_answer_tokens: how many tokens the answer has (``prepare_multimodal_edit``'s ``labels``).
    """
    if isinstance(output, torch.Tensor) and output.dim() == 3 and output.is_floating_point():
        return output[:, :-1].argmax(-1)[:, -num_answer_tokens:].numpy()  # position t predicts token t + 1
    if getattr(output, "ndim", 0) == 2 and output.shape[1] > num_answer_tokens:
        return output[:, -num_answer_tokens:]
    return output


# --- Restoring an edit: the editor iterates a dict (wheel) or may call a callable (main) ---------------------------
# Main's `MultimodalEditor.edit(..., sequential_edit=False)` undoes each edit with `editors.utils.restore_after_edit`:
# it calls the `weights_copy` an entry returned for the methods named in `CALLABLE_RESTORE_ALGS` (WISE, GRACE, ...)
# and copies dict entries back for any other. The wheel's editor only ever copies dict entries back.
def callable_restore_algs() -> set[str] | None:
    """Main's set of ``alg_name`` values whose ``weights_copy`` its editor calls to undo an edit; None on the wheel."""
    try:
        utils = importlib.import_module("easyeditor.editors.utils")
    except ImportError:
        return None
    return getattr(utils, "CALLABLE_RESTORE_ALGS", None)


# --- Editing YAMLs: `alg` beside `alg_name` (wheel) or `alg_name` alone (main) --------------------------------------
# The wheel's MEND and SERAC editing hparams classes require a key `alg` as well as `alg_name`; main's dropped the
# field (its `from_hparams` pops a legacy `alg`), so a dataclass built from a YAML written for the other target fails
# on an unknown or a missing key. Only an `alg` equal to `alg_name` is dropped or added.
def fit_alg_key(config: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """``config`` (an editing YAML's keys) with ``alg`` dropped or added as the hparams class with ``fields`` needs."""
    config = dict(config)
    if "alg" in config and "alg" not in fields and config["alg"] == config.get("alg_name"):
        del config["alg"]
    elif "alg" in fields and "alg" not in config and "alg_name" in config:
        config["alg"] = config["alg_name"]
    return config
