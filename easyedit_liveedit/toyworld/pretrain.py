"""What both worlds' pretraining shares: teacher-forced examples in EasyEdit's two prompt formats, the pieces of
``Blip2OPT.forward`` they run, EasyEdit's token accuracy, and one clipped AdamW stage with its schedule.

The answer loss is ``Blip2OPT``'s own (prompt tokens masked, exactly as its ``forward`` does): the image tokens
(``image_prefix``: ViT -> ln_vision -> Q-Former -> opt_proj) are prepended to the embedded text and get no loss.
Each world (``digits.pretrain``, ``scenes.pretrain``) decides what the model sees and which auxiliary losses stand
in for BLIP-2's first stage.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .facts import text_facts

VQA_TEMPLATE = "Question: {} Short answer: "  # VQADataset.prompt


@dataclass(frozen=True)
class Example:
    """One teacher-forced example: image slot (-1 = text only), prompt text, answer text."""

    image: int
    prompt: str
    answer: str


def text_examples() -> list[Example]:
    """Every arithmetic fact in every phrasing, as text-only examples (``facts.text_facts`` order)."""
    return [Example(-1, fact["question"], fact["answer"]) for fact in text_facts()]


class Encoder:
    """Tokenises prompt+answer once per distinct string, the way EasyEdit's code does at each call."""

    def __init__(self, tok) -> None:
        self.tok = tok
        self._cache: dict[tuple[str, str], tuple[list[int], int]] = {}

    def __call__(self, example: Example) -> tuple[list[int], int]:
        key = (example.prompt, example.answer)
        if key not in self._cache:
            # The VQA template already ends with the space; the bare format joins with one space (as EasyEdit).
            text = (
                example.prompt + example.answer
                if example.prompt.endswith(" ")
                else example.prompt + " " + example.answer
            )
            ids = self.tok(text).input_ids
            prompt_ids, answer_ids = self.tok.encode(example.prompt), self.tok.encode(example.answer)
            if ids[: len(prompt_ids)] != prompt_ids or ids[len(ids) - len(answer_ids) :] != answer_ids:
                raise ValueError(f"tokenizer: {text!r} does not split into the prompt's and the answer's tokens")
            # Supervise the answer's tokens only (the joining space of the bare format too is masked), which are
            # exactly the tokens EasyEdit's metric scores (`tok(target, add_special_tokens=False)`).
            prompt_len = len(ids) - len(answer_ids)
            self._cache[key] = (ids, prompt_len)
        return self._cache[key]

    def batch(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ids, attention mask and labels (-100 on prompt and padding), as ``Blip2OPT`` builds them."""
        encoded = [self(e) for e in examples]
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), width), self.tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (tokens, _) in enumerate(encoded):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        for row, (_, prompt_len) in enumerate(encoded):
            labels[row, :prompt_len] = -100
        return ids, mask, labels


def image_prefix(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ViT -> ln_vision -> Q-Former -> opt_proj, as in ``Blip2OPT.forward``; returns (Q-Former out, OPT prefix)."""
    image_embeds = model.ln_vision(model.visual_encoder(images))  # (B, N+1, d_vit)
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    query = model.query_tokens.expand(images.shape[0], -1, -1)  # (B, n_query, d_q)
    out = model.Qformer.bert(
        query_embeds=query, encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts, return_dict=True
    ).last_hidden_state  # (B, n_query, d_q)
    return out, model.opt_proj(out)  # (B, n_query, d_opt)


def lm_logits_and_loss(
    model: nn.Module, prefix: torch.Tensor | None, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """OPT over [image prefix; text], with no loss on the prefix (``Blip2OPT.forward``'s ``empty_targets``)."""
    embeds = model.opt_model.model.decoder.embed_tokens(ids)  # (B, T, d_opt)
    if prefix is not None:
        embeds = torch.cat([prefix, embeds], dim=1)
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=mask.dtype), mask], dim=1)
        labels = torch.cat([torch.full(prefix.shape[:2], -100, dtype=labels.dtype), labels], dim=1)
    out = model.opt_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, return_dict=True)
    return out.logits, out.loss


@torch.no_grad()
def answer_accuracy(
    model: nn.Module, encoder: Encoder, images: torch.Tensor | None, examples: list[Example], batch_size: int = 256
) -> float:
    """Teacher-forced token accuracy over the answer tokens (EasyEdit's metric, batched with right padding)."""
    model.eval()
    correct = total = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, mask, labels = encoder.batch(chunk)
        prefix = None
        if images is not None:
            prefix = image_prefix(model, images[[e.image for e in chunk]])[1]
        logits, _ = lm_logits_and_loss(model, prefix, ids, mask, labels)
        logits = logits[:, -ids.shape[1] :]  # text positions only
        pred = logits[:, :-1].argmax(-1)  # position t predicts token t+1
        target = labels[:, 1:]
        keep = target != -100
        correct += int((pred[keep] == target[keep]).sum())
        total += int(keep.sum())
    return correct / max(total, 1)


def warmup_cosine(step: int, steps: int, peak: float, warmup: int) -> float:
    """The learning rate at ``step`` of ``steps``: linear warm-up to ``peak``, then cosine decay to 5% of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    done = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))


def train_stage(
    name: str,
    steps: int,
    loss_fn: Callable[[], torch.Tensor],
    params: list[nn.Parameter],
    lr: float,
    warmup: int,
    progress: bool,
    load: list[float],
) -> tuple[float, float]:
    """One stage's clipped AdamW loop (weight decay 0.01, gradient norm 1, ``warmup_cosine``) over ``params``.

    Args:
        name: shown on the progress bar.
        steps: optimiser steps; each calls ``loss_fn`` once for the step's loss (it draws its own batch).
        params: what the optimiser updates and the clip covers.
        lr, warmup: the schedule's peak and warm-up steps.
        progress: show a tqdm progress bar.
        load: 1-minute load averages are appended every 250 steps (on a shared machine the wall time means
            little without them; ``load_summary``).

    Returns:
        (seconds, the last step's loss).
    """
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    start, loss_value = time.perf_counter(), float("nan")
    bar = tqdm(range(steps), desc=f"pretraining ({name})", disable=not progress, mininterval=1.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, steps, lr, warmup)
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss_value = float(loss.detach())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}")
        if step % 250 == 0:
            load.append(os.getloadavg()[0])
    return time.perf_counter() - start, loss_value


def load_summary(load: list[float]) -> dict | None:
    """Mean and max of the sampled 1-minute load averages (2.0 fills a 2-core machine); None if none was taken."""
    if not load:
        return None
    return {"mean": round(float(np.mean(load)), 2), "max": round(float(np.max(load)), 2)}
