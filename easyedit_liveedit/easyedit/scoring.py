"""Scoring edits with EasyEdit's own metric code, for the editor API and the comparison alike.

One definition of what a score is:

- a *request* is EasyEdit's multimodal request dict (``prompt``, ``target``, ``image``, ``rephrase_prompt``, ...),
  built from a dataset item by ``request_from_item``;
- ``score`` runs EasyEdit's ``compute_multimodal_edit_results`` on a model, with the request's images where the model
  takes its inputs (``placement.py``): reliability and generality as teacher-forced token accuracies, and the argmax
  tokens of the two locality questions;
- ``pre_edit_outputs`` scores every request on the *unedited* model before any edit is made (EasyEdit main computes
  ``pre`` after an in-place edit, which makes locality trivially 1.0);
- ``edit_scores`` turns a post-edit score and its pre-edit score into EasyEdit's five metrics: locality is the share
  of answer tokens whose post-edit argmax equals the unedited model's.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .placement import input_device, to_device

METRICS = {  # EasyEdit's key -> the column name used in the literature
    "rewrite_acc": "Reliability",
    "rephrase_acc": "T-Gen",
    "image_rephrase_acc": "M-Gen",
    "locality_acc": "T-Loc",
    "multimodal_locality_acc": "M-Loc",
}
ACCURACIES = ("rewrite_acc", "rephrase_acc", "image_rephrase_acc")
LOCALITY_OUTPUTS = {"locality_output": "locality_acc", "multimodal_locality_output": "multimodal_locality_acc"}
REQUEST_KEYS = ("prompt", "target", "image", "rephrase_prompt", "image_rephrase", "locality_prompt",
                "locality_ground_truth", "multimodal_locality_image", "multimodal_locality_prompt",
                "multimodal_locality_ground_truth")  # fmt: skip


def request_from_item(item: dict) -> dict:
    """An EasyEdit dataset item (``VQADataset`` / ``CaptionDataset``) as the request EasyEdit's executors read."""
    return {key: item[key] for key in REQUEST_KEYS if key in item}


def score(model: Any, hparams: Any, tok: Any, request: dict) -> dict:
    """EasyEdit's ``compute_multimodal_edit_results`` for one request, without gradients."""
    evaluate = importlib.import_module("easyeditor.evaluate")
    request = to_device(request, input_device(model))
    with torch.no_grad():
        return evaluate.compute_multimodal_edit_results(model, hparams.model_name, hparams, tok, request, "cpu")


def pre_edit_outputs(
    model: Any, hparams: Any, tok: Any, requests: Iterable[dict], progress: bool = False, desc: str = "pre-edit"
) -> list[dict]:
    """``score`` of every request on ``model``; call it before the first edit touches ``model``."""
    return [score(model, hparams, tok, r) for r in tqdm(list(requests), desc=desc, disable=not progress)]


def accuracies(result: dict) -> dict[str, float]:
    """The reliability and generality accuracies of one ``score`` result."""
    return {key: float(result[key]) for key in ACCURACIES if key in result}


def edit_scores(post: dict, pre: dict) -> dict[str, float]:
    """EasyEdit's five metrics of one request: the post-edit accuracies, and locality against the unedited model."""
    scores = accuracies(post)
    for output, key in LOCALITY_OUTPUTS.items():
        if output in post:
            scores[key] = float(np.mean(np.equal(post[output], pre[output])))
    return scores


def mean_scores(posts: list[dict], pres: list[dict]) -> dict[str, float]:
    """Mean of each metric over the scored requests (NaN for a metric no request has)."""
    per_request = [edit_scores(post, pre) for post, pre in zip(posts, pres, strict=True)]
    return {
        key: float(np.mean(values)) if (values := [s[key] for s in per_request if key in s]) else math.nan
        for key in METRICS
    }
