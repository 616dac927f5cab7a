"""CPU pretraining of the digits world's BLIP-2-OPT so that it genuinely answers before any edit.

What the model sees, per step (a seeded stream, so a run is reproducible on the same machine):
* image questions about the *train* pool only (canonical view or the other view), every kind and phrasing, in
  both prompt formats EasyEdit uses: the VQA template of ``VQADataset`` ("Question: {} Short answer: {answer}")
  and the bare "{question} {answer}" of ``MultimodalEditor``'s metric; captions and the classification prompt;
* text-only arithmetic facts in all four phrasings (the paraphrases make T-Locality/T-Generality meaningful).

Loss: the teacher-forced answer loss of ``Blip2OPT`` (``toyworld/pretrain.py``) plus two auxiliary terms standing
in for BLIP-2's first training stage (image-text representation learning): a digit classifier on the mean Q-Former
output (without it the LM learns to ignore the image) and an instance contrast between two random views of each
scan (without it the image tokens encode little beyond the digit class; measured: a linear key on layer-2 image
tokens then finds a held-out scan from its other view for only 14% of 420 scans, while an MMEdit edit, and so
LiveEdit's visual router, is about one scan). The heads are thrown away after pretraining; they are not part of the
saved model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..pretrain import (
    VQA_TEMPLATE,
    Encoder,
    Example,
    answer_accuracy,
    image_prefix,
    lm_logits_and_loss,
    load_summary,
    text_examples,
    train_stage,
)
from . import facts
from .config import ToyWorldConfig

LOG = logging.getLogger(__name__)


def image_examples(slot: int, label: int) -> list[Example]:
    """Every question the toy world asks about one image, in both of EasyEdit's prompt formats."""
    out = []
    for kind in facts.VQA_KINDS:
        for question in kind.templates:
            out.append(Example(slot, VQA_TEMPLATE.format(question), kind.answer(label)))
            out.append(Example(slot, question, kind.answer(label)))
    for prompt in facts.CAPTION_PROMPTS:
        out.append(Example(slot, prompt, facts.caption(label)))
    for prompt in facts.CLASSIFICATION_PROMPTS:
        out.append(Example(slot, prompt, facts.DIGIT_WORDS[label]))
        out.append(Example(slot, VQA_TEMPLATE.format(prompt), facts.DIGIT_WORDS[label]))
    return out


def random_views(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Show a fraction ``p`` of the batch through a fresh random view of the ``images.render_view`` family.

    The written views are one fixed transform per scan; drawing new ones each step (rotation 0-15 degrees
    either way, scale 0.85-1, shift up to one source pixel) teaches the model that a view keeps the subject,
    which is what M-Generality (``image_rephrase``) asks of held-out scans.
    """
    n = images.shape[0]
    angle = torch.deg2rad(torch.rand(n, generator=generator) * 30.0 - 15.0)
    scale = 0.85 + 0.15 * torch.rand(n, generator=generator)
    shift = (torch.rand(n, 2, generator=generator) * 2.0 - 1.0) * (2.0 / 8.0)  # one source pixel of 8, in [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2): output -> input
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    keep = (torch.rand(n, generator=generator) >= p).view(n, 1, 1, 1)
    return torch.where(keep, images, moved)


def instance_contrastive_loss(
    model: nn.Module, head: nn.Module, images: torch.Tensor, generator: torch.Generator, temperature: float
) -> torch.Tensor:
    """InfoNCE between two random views of each image: each view must pick its own scan out of the batch.

    The stand-in for BLIP-2 stage 1's image-text contrastive learning, which is what makes a real VLM's image
    tokens describe *this* image rather than only its class. Without it the toy's image tokens collapse to the
    digit class (two scans of one digit look alike at every layer), while an MMEdit edit is about one scan.
    """
    views = torch.cat([random_views(images, generator, p=1.0), random_views(images, generator, p=1.0)])
    query_out, _ = image_prefix(model, views)  # (2n, n_query, d_q)
    z = F.normalize(head(query_out.flatten(1)), dim=-1)  # (2n, d_z)
    first, second = z.chunk(2)
    logits = first @ second.T / temperature  # (n, n): row i's positive is column i
    target = torch.arange(len(images))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@dataclass
class _Batches:
    """What one step's loss is drawn from (a seeded stream of batches over the train pool)."""

    model: nn.Module
    config: ToyWorldConfig
    encoder: Encoder
    examples: list[Example]
    texts: list[Example]
    labels_by_slot: torch.Tensor
    train_images: torch.Tensor  # (2n, 3, S, S): canonical views, then the written other views
    heads: nn.ModuleDict  # auxiliary heads (digit classifier, instance projection); discarded afterwards
    rng: np.random.Generator
    generator: torch.Generator

    def loss(self) -> torch.Tensor:
        """One step's loss: image answers + text answers + digit classifier + instance contrast."""
        c, rng, generator = self.config, self.rng, self.generator
        batch = [self.examples[i] for i in rng.integers(len(self.examples), size=c.batch_size)]
        slots = [e.image for e in batch]
        query_out, prefix = image_prefix(self.model, random_views(self.train_images[slots], generator))
        _, answer_loss = lm_logits_and_loss(self.model, prefix, *self.encoder.batch(batch))
        aux_loss = F.cross_entropy(self.heads["digit"](query_out.mean(dim=1)), self.labels_by_slot[slots])
        text_batch = [self.texts[i] for i in rng.integers(len(self.texts), size=c.text_batch_size)]
        _, text_loss = lm_logits_and_loss(self.model, None, *self.encoder.batch(text_batch))
        loss = answer_loss + text_loss + c.aux_weight * aux_loss
        if c.instance_weight > 0:
            n_scans = len(self.labels_by_slot) // 2
            scans = torch.from_numpy(rng.choice(n_scans, size=min(c.instance_batch, n_scans), replace=False))
            contrast = instance_contrastive_loss(
                self.model, self.heads["instance"], self.train_images[scans], generator, c.instance_temperature
            )
            loss = loss + c.instance_weight * contrast
        return loss


def pretrain(
    model: nn.Module,
    tok,
    config: ToyWorldConfig,
    train_images: torch.Tensor,
    train_labels: list[int],
    heldout_images: torch.Tensor | None = None,
    heldout_labels: list[int] | None = None,
    progress: bool = True,
) -> dict:
    """Train every part of the toy backbone on the train pool; returns timing and held-out accuracy.

    Args:
        model: a fresh ``Blip2OPT`` from ``backbone.construct``.
        tok: the OPT-side tokenizer.
        config: sizes and schedule (``steps``, ``batch_size``, ``text_batch_size``, ``lr``, ``warmup``, the
            auxiliary weights).
        train_images: (2 * n, 3, S, S): the n train scans' canonical views, then their other views.
        train_labels: the n labels.
        heldout_images, heldout_labels: optional held-out scans whose digit accuracy the result reports.
        progress: show a tqdm progress bar.

    Returns:
        ``{"steps", "seconds", "cpu_seconds", "final_loss", "threads", "load_average"}`` (+
        ``"heldout_digit_accuracy"``).
    """
    torch.manual_seed(config.seed)
    n = len(train_labels)
    for param in model.parameters():  # Blip2OPT freezes its ViT; the toy ViT is trained from scratch here
        param.requires_grad_(True)
    width = model.query_tokens.shape[-1]
    heads = nn.ModuleDict(
        {
            "digit": nn.Linear(width, 10),
            "instance": nn.Linear(model.query_tokens.shape[1] * width, width),
        }
    )
    batches = _Batches(
        model=model,
        config=config,
        encoder=Encoder(tok),
        examples=[e for slot in range(2 * n) for e in image_examples(slot, train_labels[slot % n])],
        texts=text_examples(),
        labels_by_slot=torch.tensor([train_labels[slot % n] for slot in range(2 * n)]),
        train_images=train_images,
        heads=heads,
        rng=np.random.default_rng([config.seed, 4]),
        generator=torch.Generator().manual_seed(config.seed),
    )
    params = list(model.parameters()) + list(heads.parameters())
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    cpu_start, load = time.process_time(), []
    try:
        model.train()
        seconds, final = train_stage(
            "digits", config.steps, batches.loss, params, config.lr, config.warmup, progress, load
        )
        cpu_seconds = time.process_time() - cpu_start  # what the loop costs on an idle machine
        model.eval()
        accuracy = None
        if heldout_images is not None and heldout_labels is not None:
            kind = facts.VQA_KINDS[0]
            heldout = [Example(i, kind.templates[0], kind.answer(y)) for i, y in enumerate(heldout_labels)]
            accuracy = round(answer_accuracy(model, batches.encoder, heldout_images, heldout), 4)
    finally:
        torch.set_num_threads(threads)
    result = {
        "steps": config.steps,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "final_loss": round(final, 4),
        "threads": config.threads,
        "load_average": load_summary(load),
    }
    if accuracy is not None:
        result["heldout_digit_accuracy"] = accuracy
    LOG.info("pretraining: %s", result)
    return result
