"""EasyEdit main's ``MultimodalEditor`` editing API, for every registered method, on both EasyEdit targets.

The wheel's ``MultimodalEditor.edit`` has no ``sequential_edit``/``file_type`` parameters (it swallows them),
needs ``locality_inputs``, hard-codes ``cuda:{device}``, and its ``edit_dataset`` calls a function it never
imports. EasyEdit main has the signatures, but scores ``pre`` after a non-sequential edit, undoes only the methods it
lists, and its ``edit_dataset`` never undoes. This subclass of the target's own ``MultimodalEditor`` gives main's
signatures with one behaviour on both targets, so code written for main runs unchanged:

- pre-edit scores of every request are computed on the unedited model before the first edit (``scoring.py``);
- ``sequential_edit=True``: edits accumulate in place; each is scored right after it is made;
- ``sequential_edit=False``: each request is edited, scored, then undone before the next one, so every request
  meets the unedited model. Undo restores what the edit may change: the weights a weight-editing method edits
  (its hparams' ``inner_params``, e.g. MEND's), the memory of an executor that keeps one (SERAC's ``alg``), and
  whatever a callable ``weights_copy`` undoes (LiveEdit's: exactly the edit's experts). An edit that changed any
  other weight raises, naming it, instead of scoring a model it cannot restore.

Scores come from EasyEdit's own ``compute_multimodal_edit_results`` and locality is the share of answer tokens
whose argmax is unchanged from the genuinely unedited model, under EasyEdit's metric names. Image paths are read
under ``hparams.coco_image`` / ``hparams.rephrase_image`` on both targets (main's own editor reads them as given).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from time import perf_counter
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import compat, models, scoring, validate
from .checkpoints import load_glue
from .placement import input_device, to_device

LOG = logging.getLogger(__name__)

_TargetEditor = importlib.import_module("easyeditor.editors.multimodal_editor").MultimodalEditor


class _Checkpoint:
    """What one edit of ``editor``'s method may change, saved before the edit so that ``restore`` undoes it."""

    def __init__(self, editor: MultimodalEditor) -> None:
        self.editor = editor
        model = editor.model
        self.versions = {name: p._version for name, p in model.named_parameters()}
        edited = set(getattr(editor.hparams, "inner_params", None) or ())
        self.weights = {name: p.detach().clone() for name, p in model.named_parameters() if name in edited}
        self.executor = getattr(editor.apply_algo, "__self__", None)  # EasyEdit's stateful executors (MEND, SERAC)
        if self.executor is not None and not getattr(self.executor, "is_init", True):
            # bound lazily by the first edit: bind it now, so that its unedited state (SERAC: an empty memory) exists
            self.executor.init_model(model, editor.tok, editor.hparams)
        self.alg = getattr(self.executor, "alg", None)

    def restore(self, weights_copy: Any) -> None:
        """Put back everything the edit changed; raises ``RuntimeError`` naming a weight it cannot restore.

        ``weights_copy`` is what the method's entry returned: called when it is callable, as EasyEdit main's
        ``restore_after_edit`` does for its ``CALLABLE_RESTORE_ALGS`` (LiveEdit's ``EditUndo`` removes the edit's
        experts).
        """
        with torch.no_grad():
            for name, p in self.editor.model.named_parameters():
                if name in self.weights:
                    p.copy_(self.weights[name])
                elif p._version != self.versions.get(name, p._version):
                    raise RuntimeError(
                        f"{self.editor.alg_name} changed the weight {name!r}, which its hparams' inner_params do not "
                        "name, so sequential_edit=False cannot undo the edit"
                    )
        if self.executor is not None and hasattr(self.executor, "alg"):
            self.executor.alg = self.alg
        if callable(weights_copy):
            weights_copy()


def _opens_paths_as_given(editor: _TargetEditor) -> bool:
    """Whether the target's ``_prepare_requests`` hands image paths to its processor as given (EasyEdit main, whose
    ``_prepare_requests`` takes ``file_type``) rather than under ``coco_image`` / ``rephrase_image`` (the wheel)."""
    return "file_type" in inspect.signature(editor._prepare_requests).parameters


class MultimodalEditor(_TargetEditor):
    """``easyeditor.MultimodalEditor`` with EasyEdit main's ``edit``/``edit_dataset`` (see module docstring)."""

    def __init__(self, hparams: Any) -> None:
        if hasattr(hparams, "check_paths"):  # LiveEdit's: name a missing file's key before EasyEdit builds anything
            hparams.check_paths()
        if hparams.model_name in models.PLUGIN_BUILT:  # the wheel cannot build it (LLaVA-1.5): models.py does
            self._init_plugin_backbone(hparams)
            return
        with compat.cuda_to_cpu():
            super().__init__(hparams)
        load_glue(self.model, hparams)  # the checkpoints the wheel skips, or an error naming the key

    def _init_plugin_backbone(self, hparams: Any) -> None:
        """What the wheel's ``__init__`` sets up, for a backbone the plugin builds (``models.build_llava``)."""
        self.model_name, self.alg_name, self.hparams = hparams.model_name, hparams.alg_name, hparams
        self.apply_algo = importlib.import_module("easyeditor.util.alg_dict").ALG_MULTIMODAL_DICT[hparams.alg_name]
        self.model = models.build_llava(hparams)
        self.tok = self.model.tokenizer
        processors = importlib.import_module("easyeditor.dataset.processor.blip_processors")
        size = self.model.llava.config.vision_config.image_size  # BLIP's processor normalises as CLIP does
        self.vis_tok = processors.BlipImageEvalProcessor(image_size=size, mean=None, std=None)
        self.vis_root, self.rephrase_root = hparams.coco_image, hparams.rephrase_image

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
            raise NotImplementedError(f"file_type {file_type!r}: BLIP-2 and MiniGPT-4 read images only")
        if self.alg_name == "IKE":
            raise NotImplementedError("IKE edits through in-context examples: use easyedit_liveedit.compare for IKE")
        roots = getattr(self, "vis_root", "."), getattr(self, "rephrase_root", None)
        validate.validate_edit_arguments(prompts, targets, image, rephrase_prompts, rephrase_image, locality_inputs,
                                         *roots)  # fmt: skip
        if isinstance(prompts, str):
            prompts, targets, image = [prompts], [targets], [image]
        locality_inputs = locality_inputs or {}
        if _opens_paths_as_given(self):
            image, rephrase_image, locality_inputs = self._rooted(image, rephrase_image, locality_inputs)
        with compat.cuda_to_cpu():
            requests = self._prepare_requests(
                prompts, targets, image, rephrase_prompts, rephrase_image, locality_inputs, **kwargs
            )
            return self._edit_requests(requests, keep_original_weight, verbose, sequential_edit)

    def _rooted(self, image: list[str], rephrase_image: Any, locality_inputs: dict) -> tuple[list[str], Any, dict]:
        """Image paths joined with the hparams' image folders, as the wheel's editor and both targets' datasets do."""
        rephrase = [rephrase_image] if isinstance(rephrase_image, str) else rephrase_image
        locality = dict(locality_inputs)
        if "vision" in locality:
            vision = dict(locality["vision"])
            images = [vision["image"]] if isinstance(vision["image"], str) else vision["image"]
            vision["image"] = [os.path.join(self.vis_root, p) for p in images]
            locality["vision"] = vision
        return (
            [os.path.join(self.vis_root, p) for p in image],
            None if rephrase is None else [os.path.join(self.rephrase_root, p) for p in rephrase],
            locality,
        )

    def edit_dataset(
        self, ds: Dataset, keep_original_weight: bool = False, verbose: bool = True, sequential_edit: bool = False
    ) -> tuple[list[dict], Any, dict]:
        """Edit every record of an EasyEdit ``VQADataset``/``CaptionDataset`` (images already processed), after
        checking the records it was built from (``validate.validate_dataset``: EasyEdit's datasets skip a bad record
        silently)."""
        validate.validate_dataset(ds, f"{self.alg_name} edit_dataset: {type(ds).__name__}")
        requests = [scoring.request_from_item(item) for item in ds]
        with compat.cuda_to_cpu():
            return self._edit_requests(requests, keep_original_weight, verbose, sequential_edit)

    def _edit_requests(
        self, requests: list[dict], keep_original_weight: bool, verbose: bool, sequential_edit: bool
    ) -> tuple[list[dict], Any, dict]:
        validate.validate_requests(requests, f"{self.alg_name} edit")  # before anything is edited
        validate.check_context(requests, self.tok, validate.text_token_limit(self.model), f"{self.alg_name} edit")
        pres = scoring.pre_edit_outputs(self.model, self.hparams, self.tok, requests, verbose, "pre-edit scores")
        all_metrics, edited_model, weights_copy = [], self.model, {}
        for i, (request, pre) in enumerate(zip(tqdm(requests, desc=f"{self.alg_name} edits", disable=not verbose),
                                               pres, strict=True)):  # fmt: skip
            checkpoint = None if sequential_edit else _Checkpoint(self)
            start = perf_counter()
            edited_model, weights_copy = self.apply_algo(
                self.model, self.tok, [to_device(request, input_device(self.model))], self.hparams,
                copy=False, return_orig_weights=True, keep_original_weight=keep_original_weight,
            )  # fmt: skip
            elapsed = perf_counter() - start
            post = scoring.score(edited_model, self.hparams, self.tok, request)
            if checkpoint is not None:
                checkpoint.restore(weights_copy)
            metrics = {
                "case_id": i,
                "time": elapsed,
                "pre": scoring.accuracies(pre),
                "post": scoring.edit_scores(post, pre),
            }
            if verbose:
                LOG.info("%d editing: %s -> %s\n %s", i, request["prompt"], request["target"], metrics)
            all_metrics.append(metrics)
        return all_metrics, edited_model, weights_copy
