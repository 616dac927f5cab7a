"""Meta-training batches whose questions read exactly as EasyEdit's editor will present them.

EasyEdit trains on one rendering of an MMEdit question and edits with another. ``VQADataset.collate_fn``
wraps each image question in ``"Question: {} Short answer: "``; ``MultimodalEditor`` makes and scores every
edit with ``prepare_multimodal_edit``, which joins the bare question and the answer with one space. An editor
meta-trained on the first rendering meets the second only once it is used. On the toy world, LiveEdit's
generated experts trained that way gave the new answer for 0.78 of eval edits rendered as in training and for
0.59 rendered as the editor renders them (BENCHMARKS.md, "Training and editing render questions differently").

With MiniGPT-4's LLaMA tokenizer the template's trailing space also miscounts ``prompts_len``, so that the first
answer token is masked as prompt (``backbones/minigpt4.py``); the editor's rendering has no such space.

``EditorQuestions`` wraps an EasyEdit multimodal dataset and renders every question of its batches with
``prepare_multimodal_edit`` itself, and adds ``answer_tokens``: per row, how many tokens EasyEdit's metric scores
(the trainer's accuracies use it). Everything else in a batch (images, labels) stays the dataset's own.

Compatibility (both EasyEdit targets): ``CaptionDataset.collate_fn`` tokenizes a batch's locality answers with
``return_tensors="pt"`` and no padding, so an E-IC batch whose locality answers differ in token length raises
``ValueError`` (EasyEdit's own caption trainers run batch 1). The models never read those ``labels`` (they derive
their targets from ``text_input`` and ``prompts_len``), so ``EditorQuestions`` makes such a batch again with a
tokenizer that pads (``_PaddingTokenizer``); a batch the dataset can make is left as it is. With ``questions:
dataset`` the trainer uses the dataset's collate as it is.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

from torch.utils.data import Dataset

# Sub-batch of EasyEdit's multimodal collate_fn -> (item key of its question, item key of its answer).
QUESTIONS = {
    "edit_inner": ("prompt", "target"),
    "edit_outer": ("rephrase_prompt", "target"),
    "edit_outer_image": ("prompt", "target"),
    "loc": ("locality_prompt", "locality_ground_truth"),
    "loc_image": ("multimodal_locality_prompt", "multimodal_locality_ground_truth"),
}


class Rendered(NamedTuple):
    """One question as ``prepare_multimodal_edit`` renders it."""

    text_input: str  # question + " " + answer
    prompts_len: int  # tokens of the question, counted as EasyEdit counts them for the model
    answer_tokens: int  # tokens of the answer alone: what EasyEdit's metric scores


class _PaddingTokenizer:
    """A tokenizer that pads every batch it returns as tensors (``questions.py``'s compatibility note)."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("return_tensors") is not None:
            kwargs.setdefault("padding", True)
        return self._tok(*args, **kwargs)


def _collate(dataset: Any, items: list[dict[str, Any]]) -> dict[str, Any]:
    """``dataset.collate_fn(items)``; a batch it cannot make for answers of unequal length is made with padding."""
    try:
        return dataset.collate_fn(items)
    except ValueError:
        tok, dataset.tok = dataset.tok, _PaddingTokenizer(dataset.tok)
        try:
            return dataset.collate_fn(items)
        finally:
            dataset.tok = tok


class EditorQuestions(Dataset):
    """An EasyEdit ``VQADataset`` / ``CaptionDataset`` whose batches render questions as ``MultimodalEditor`` does."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        # every epoch renders the same questions again; with a slow tokenizer that cost the toy's batches of 32
        # records 90 ms each, a fifth of a training step
        self._rendered: dict[tuple[str, str], Rendered] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def collate_fn(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The dataset's batch, each sub-batch's ``text_input``, ``prompts_len`` and ``answer_tokens`` the editor's."""
        batch = _collate(self.dataset, items)
        for name, (question, answer) in QUESTIONS.items():
            if name not in batch:
                continue
            rendered = [self._render(item[question], item[answer]) for item in items]
            for key in Rendered._fields:
                batch[name][key] = [getattr(r, key) for r in rendered]
        return batch

    def _render(self, question: str, answer: str) -> Rendered:
        if (question, answer) not in self._rendered:
            prepare = importlib.import_module("easyeditor.evaluate").prepare_multimodal_edit
            sample = prepare(self.dataset.config, self.dataset.tok, answer, question, None)
            self._rendered[question, answer] = Rendered(
                sample["text_input"][0], sample["prompts_len"][0], sample["labels"].shape[1]
            )
        return self._rendered[question, answer]
