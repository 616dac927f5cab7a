"""The EMT forgetting probe: an edited vision-language model used as an image classifier.

Zhai et al. (2023, "EMT") measure catastrophic forgetting of a fine-tuned multimodal LM by asking it to
classify held-out labelled images with a prompt that lists the class names. Here the same question is put to
the model before any edit and after T edits: an editor that damages the backbone's general ability shows it
as a drop in this accuracy, even when the edited records themselves look fine.

Judging needs no external model: the model answers greedily (argmax, one token at a time, at most as many
tokens as the longest class name has), the answer is cut at the first stop token, normalised (lower case,
punctuation and repeated spaces removed), and counts as right only if it equals the normalised label. The answer
starts where EasyEdit's rendering of an edit puts it (``prepare_multimodal_edit``: question, one space, answer): a
tokenizer that keeps that space as a token of its own (the toy world's) gets it before the first answer token, as
every edit and every metric presents it; one that merges it into the answer's first token (GPT-2's BPE, LLaMA's)
gets nothing more.

The model is called exactly as EasyEdit's metric code calls it, ``model(samples)`` with ``image``,
``text_input``, ``labels`` and ``prompts_len``, so the probe works for any edited model an EasyEdit executor
returns: a backbone whose weights were edited (MEND) or a wrapper that routes to experts (LiveEdit).
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..easyedit.placement import input_device

LOG = logging.getLogger(__name__)

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalise(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: ``" Seven."`` -> ``"seven"``."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


@dataclass(frozen=True)
class ProbeResult:
    """Classification accuracy over ``n`` images; ``finite`` is False if any logit was NaN or infinite."""

    accuracy: float
    n: int
    finite: bool


def load_records(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Classification records (``image``, ``prompt``, ``answer``, ``classes``) from a JSON list; first ``limit``."""
    records = json.loads(Path(path).read_text())
    for i, record in enumerate(records):
        missing = {"image", "prompt", "answer"} - set(record)
        if missing:
            raise ValueError(f"{path}: record {i} lacks {sorted(missing)}")
    return records if limit is None else records[:limit]


def _logits(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


@torch.no_grad()
def _next_tokens(model: Callable, tok: Any, images: torch.Tensor, texts: list[str], prompts_len: list[int]) -> tuple:
    """Argmax next token after each text (right padding: each row's last real position), and finiteness."""
    lengths = [len(tok(t).input_ids) for t in texts]  # tokenised as the backbone's forward does
    # labels: token ids, as EasyEdit's batches carry them (EasyEdit main's SERAC reads their shape); nothing scores it
    device = input_device(model)
    labels = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True).input_ids
    samples = {
        "image": images.to(device),
        "text_input": texts,
        "labels": labels.to(device),
        "prompts_len": prompts_len,
    }
    logits = _logits(model(samples))  # (B, n_image + T_text, V)
    offset = logits.shape[1] - max(lengths)  # image tokens sit before the text
    rows = torch.arange(len(texts))
    last = torch.tensor([offset + n - 1 for n in lengths])
    picked = logits[rows, last]  # (B, V)
    return picked.argmax(-1).tolist(), bool(torch.isfinite(picked).all())


def answer_joiner(tok: Any, prompt: str, answer: str) -> str:
    """The text EasyEdit's rendering puts between ``prompt`` and an answer as tokens of its own: ``" "`` for a
    tokenizer that keeps the joining space apart, ``""`` for one that merges it into the answer's first token."""
    ids = tok(prompt + " " + answer).input_ids
    between = ids[len(tok(prompt).input_ids) : len(ids) - len(tok(answer, add_special_tokens=False).input_ids)]
    return tok.decode(between)


def classification_accuracy(
    model: Callable,
    tok: Any,
    records: list[dict[str, Any]],
    load_image: Callable[[str], torch.Tensor],
    batch_size: int = 16,
) -> ProbeResult:
    """EMT-style accuracy of ``model`` on labelled images (greedy answer == label after normalisation).

    Args:
        model: anything EasyEdit's metric code can call (``model(samples)`` -> logits or an output with
            ``.logits``).
        tok: the language-model tokenizer (right padding, as EasyEdit's backbones use).
        records: from ``load_records``; each ``prompt`` lists the class names, ``answer`` is the label.
        load_image: relative image path -> processed image tensor ``(3, H, W)``.
        batch_size: images per forward.

    Returns:
        ``ProbeResult``; accuracy is NaN for an empty record list.
    """
    if not records:
        return ProbeResult(float("nan"), 0, True)
    classes = {c for r in records for c in r.get("classes", [r["answer"]])} | {r["answer"] for r in records}
    max_new_tokens = max(len(tok(c, add_special_tokens=False).input_ids) for c in classes)
    stop = {tok.eos_token_id, *tok("\n", add_special_tokens=False).input_ids}
    correct, finite = 0, True
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        images = torch.stack([load_image(r["image"]) for r in batch])  # (B, 3, H, W)
        prompts = [r["prompt"] for r in batch]
        prompts_len = [len(tok.encode(p)) for p in prompts]  # as prepare_multimodal_edit counts the prompt
        joins = [answer_joiner(tok, r["prompt"], r.get("classes", [r["answer"]])[0]) for r in batch]
        generated: list[list[int]] = [[] for _ in batch]
        done = [False] * len(batch)
        for _ in range(max_new_tokens):
            texts = [p + (" " + tok.decode(g).strip() if g else j) for p, g, j in zip(prompts, generated, joins,
                                                                                     strict=True)]  # fmt: skip
            next_ids, ok = _next_tokens(model, tok, images, texts, prompts_len)
            finite &= ok
            for i, token in enumerate(next_ids):
                if not done[i]:
                    if token in stop:
                        done[i] = True
                    else:
                        generated[i].append(token)
            if all(done):
                break
        for record, ids in zip(batch, generated, strict=True):
            correct += normalise(tok.decode(ids)) == normalise(record["answer"])
    return ProbeResult(correct / len(records), len(records), finite)
