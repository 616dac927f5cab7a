"""EasyEdit main's ``MultimodalEditor`` editing API, for every registered method, on the PyPI wheel.

The wheel's ``MultimodalEditor.edit`` has no ``sequential_edit``/``file_type`` parameters (it swallows them),
needs ``locality_inputs``, hard-codes ``cuda:{device}``, and its ``edit_dataset`` calls a function it never
imports. This subclass gives EasyEdit main's signatures and semantics, so code written for main runs
unchanged:

- ``sequential_edit=False``: each request is edited, scored, then undone (weights restored; LiveEdit's new
  experts removed), so every request meets the unedited model.
- ``sequential_edit=True``: pre-edit scores are computed for every request *before* any edit (the model is
  edited in place); edits then accumulate and each is scored right after it is made, as in main.

Scores come from EasyEdit's own ``compute_multimodal_edit_results`` and locality is the share of answer
tokens whose argmax is unchanged from the genuinely unedited model, under EasyEdit's metric names.
"""

from __future__ import annotations

import importlib
import logging
from time import perf_counter
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import compat
from .editor import LiveEdit
from .liveedit_main import attached_editor

LOG = logging.getLogger(__name__)

_WheelEditor = importlib.import_module("easyeditor.editors.multimodal_editor").MultimodalEditor
_LOCALITY_OUTPUTS = {"locality_output": "locality_acc", "multimodal_locality_output": "multimodal_locality_acc"}


class MultimodalEditor(_WheelEditor):
    """``easyeditor.MultimodalEditor`` with EasyEdit main's ``edit``/``edit_dataset`` (see module docstring)."""

    def __init__(self, hparams: Any) -> None:
        with compat.cuda_to_cpu():
            super().__init__(hparams)

    def edit(
        self,
        prompts: str | list[str],
        targets: str | list[str],
        image: str | list[str],
        file_type: str | list[str] | None = None,
        rephrase_prompts: str | list[str] | None = None,
        rephrase_image: str | list[str] | None = None,
        locality_inputs: dict | None = None,
        keep_original_weight: bool = False,
        verbose: bool = True,
        sequential_edit: bool = False,
        **kwargs: Any,
    ) -> tuple[list[dict], Any, dict]:
        """Edit ``prompts -> targets`` about ``image`` (paths under ``hparams.coco_image``).

        Returns:
            ``(metrics, edited_model, weights_copy)`` as EasyEdit main: one dict per request with ``pre``
            and ``post`` scores (``rewrite_acc``, ``rephrase_acc``, ``image_rephrase_acc``, ``locality_acc``,
            ``multimodal_locality_acc``) and the edit ``time``.
        """
        if file_type is not None and set([file_type] if isinstance(file_type, str) else file_type) != {"image"}:
            raise NotImplementedError(f"file_type {file_type!r}: the wheel's datasets read images only")
        if self.alg_name == "IKE":
            raise NotImplementedError("IKE edits through in-context examples: use easyedit_liveedit.compare for IKE")
        if isinstance(prompts, str):
            prompts, targets, image = [prompts], [targets], [image]
        if not len(prompts) == len(targets) == len(image):
            raise ValueError(
                f"prompts, targets and image differ in length: {len(prompts)}, {len(targets)}, {len(image)}"
            )
        with compat.cuda_to_cpu():
            requests = self._prepare_requests(
                prompts, targets, image, rephrase_prompts, rephrase_image, locality_inputs or {}, **kwargs
            )
            return self._edit_requests(requests, keep_original_weight, verbose, sequential_edit)

    def edit_dataset(
        self, ds: Dataset, keep_original_weight: bool = False, verbose: bool = True, sequential_edit: bool = False
    ) -> tuple[list[dict], Any, dict]:
        """Edit every record of an EasyEdit ``VQADataset``/``CaptionDataset`` (images already processed)."""
        requests = [_request_from_item(item) for item in ds]
        with compat.cuda_to_cpu():
            return self._edit_requests(requests, keep_original_weight, verbose, sequential_edit)

    def _edit_requests(
        self, requests: list[dict], keep_original_weight: bool, verbose: bool, sequential_edit: bool
    ) -> tuple[list[dict], Any, dict]:
        score = importlib.import_module("easyeditor.evaluate").compute_multimodal_edit_results
        device = self.hparams.device

        def evaluate(model: Any, request: dict) -> dict:
            with torch.no_grad():
                return score(model, self.model_name, self.hparams, self.tok, request, device)

        pre_scores = []
        if sequential_edit:  # before anything is edited in place
            pre_scores = [evaluate(self.model, r) for r in tqdm(requests, desc="pre-edit scores", disable=not verbose)]
        all_metrics, edited_model, weights_copy = [], self.model, {}
        for i, request in enumerate(tqdm(requests, desc=f"{self.alg_name} edits", disable=not verbose)):
            experts_before = _liveedit_ids(self.model)
            start = perf_counter()
            edited_model, weights_copy = self.apply_algo(
                self.model, self.tok, [request], self.hparams, copy=False, return_orig_weights=True,
                keep_original_weight=keep_original_weight,
            )  # fmt: skip
            elapsed = perf_counter() - start
            post = evaluate(edited_model, request)
            if sequential_edit:
                pre = pre_scores[i]
            else:  # undo this edit, then score the unedited model
                self._undo(edited_model, weights_copy, experts_before)
                pre = evaluate(self.model, request)
            metrics = {"case_id": i, "time": elapsed, "pre": pre, "post": post}
            _locality_from_outputs(metrics)
            if verbose:
                LOG.info("%d editing: %s -> %s\n %s", i, request["prompt"], request["target"], metrics)
            all_metrics.append(metrics)
        return all_metrics, edited_model, weights_copy

    def _undo(self, edited_model: Any, weights_copy: dict, experts_before: set[int]) -> None:
        """Restore weight-editing methods' weights; remove the experts LiveEdit added for this request."""
        nethook = importlib.import_module("easyeditor.util.nethook")
        with torch.no_grad():
            for name, value in weights_copy.items():
                param = nethook.get_parameter(self.model, name)
                param[...] = value.to(param.device)
        if isinstance(edited_model, LiveEdit):
            for expert_id in set(edited_model.library.ids()) - experts_before:
                edited_model.remove(expert_id)


def _liveedit_ids(model: Any) -> set[int]:
    """Ids of the experts of the LiveEdit editor attached to ``model`` (empty if there is none yet)."""
    editor = attached_editor(model)
    return set(editor.library.ids()) if editor is not None else set()


def _locality_from_outputs(metrics: dict) -> None:
    """EasyEdit's locality: share of answer tokens whose post-edit argmax equals the unedited one's."""
    for output_key, acc_key in _LOCALITY_OUTPUTS.items():
        if output_key in metrics["post"]:
            post, pre = metrics["post"].pop(output_key), metrics["pre"].pop(output_key)
            metrics["post"][acc_key] = float(np.mean(np.equal(post, pre)))


def _request_from_item(item: dict) -> dict:
    """An EasyEdit dataset item (``VQADataset.__getitem__``) as a ``MultimodalEditor`` request."""
    return {
        "prompt": item["prompt"],
        "target": item["target"],
        "image": item["image"],
        "rephrase_prompt": item["rephrase_prompt"],
        "image_rephrase": item["image_rephrase"],
        "locality_prompt": item["locality_prompt"],
        "locality_ground_truth": item["locality_ground_truth"],
        "multimodal_locality_image": item["multimodal_locality_image"],
        "multimodal_locality_prompt": item["multimodal_locality_prompt"],
        "multimodal_locality_ground_truth": item["multimodal_locality_ground_truth"],
    }
