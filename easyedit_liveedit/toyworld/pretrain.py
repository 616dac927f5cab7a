"""CPU pretraining of the toy BLIP-2-OPT so that it genuinely answers before any edit.

What the model sees, per step (a seeded stream, so a run is reproducible on the same machine):
* image questions about the *train* pool only (canonical view or the other view), every kind and phrasing, in
  both prompt formats EasyEdit uses: the VQA template of ``VQADataset`` ("Question: {} Short answer: {answer}")
  and the bare "{question} {answer}" of ``MultimodalEditor``'s metric; captions and the classification prompt;
* text-only arithmetic facts in all four phrasings (the paraphrases make T-Locality/T-Generality meaningful).

Loss: the teacher-forced answer loss of ``Blip2OPT`` (prompt tokens masked, exactly as its ``forward`` does)
plus two auxiliary terms standing in for BLIP-2's first training stage (image-text representation learning):
a digit classifier on the mean Q-Former output (without it the LM learns to ignore the image) and an
instance contrast between two random views of each scan (without it the image tokens encode little beyond the
digit class; measured: a linear key on layer-2 image tokens then finds a held-out scan from its other view for
only 14% of 420 scans, while an MMEdit edit, and so LiveEdit's visual router, is about one scan). The heads are
thrown away after pretraining; they are not part of the saved model.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import facts
from .config import ToyWorldConfig

LOG = logging.getLogger(__name__)

VQA_TEMPLATE = "Question: {} Short answer: "  # VQADataset.prompt


@dataclass(frozen=True)
class Example:
    """One teacher-forced example: image slot (-1 = text only), prompt text, answer text."""

    image: int
    prompt: str
    answer: str


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


def text_examples() -> list[Example]:
    """Every arithmetic fact in every phrasing."""
    return [
        Example(-1, *facts.arithmetic(a, b, t))
        for a in range(10)
        for b in range(10)
        for t in range(len(facts.ARITHMETIC_TEMPLATES))
    ]


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
class _Run:
    """Everything the optimisation loop of ``pretrain`` works with (one seeded stream of batches)."""

    model: nn.Module
    config: ToyWorldConfig
    encoder: Encoder
    examples: list[Example]
    texts: list[Example]
    labels_by_slot: torch.Tensor
    train_images: torch.Tensor  # (2n, 3, S, S): canonical views, then the written other views
    heads: nn.ModuleDict  # auxiliary heads (digit classifier, instance projection); discarded afterwards
    optimizer: torch.optim.Optimizer
    heldout_images: torch.Tensor | None
    heldout: list[Example]

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 5% of the peak."""
        c = self.config
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        done = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))

    def loss(self, rng: np.random.Generator, generator: torch.Generator) -> torch.Tensor:
        """One step's loss: image answers + text answers + digit classifier + instance contrast."""
        c = self.config
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
        heldout_images, heldout_labels: optional held-out scans whose accuracy the progress bar reports.
        progress: show a tqdm progress bar.

    Returns:
        ``{"steps", "seconds", "cpu_seconds", "final_loss", "threads"}`` (+ ``"heldout_digit_accuracy"``).
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
    params = list(model.parameters()) + list(heads.parameters())
    heldout = []
    if heldout_images is not None and heldout_labels is not None:
        heldout = [
            Example(i, facts.VQA_KINDS[0].templates[0], facts.VQA_KINDS[0].answer(y))
            for i, y in enumerate(heldout_labels)
        ]
    run = _Run(
        model=model,
        config=config,
        encoder=Encoder(tok),
        examples=[e for slot in range(2 * n) for e in image_examples(slot, train_labels[slot % n])],
        texts=text_examples(),
        labels_by_slot=torch.tensor([train_labels[slot % n] for slot in range(2 * n)]),
        train_images=train_images,
        heads=heads,
        optimizer=torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01),
        heldout_images=heldout_images,
        heldout=heldout,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        result = _loop(run, progress)
    finally:
        torch.set_num_threads(threads)
    result["threads"] = config.threads
    LOG.info("pretraining: %s", result)
    return result


def _loop(run: _Run, progress: bool) -> dict:
    """The optimisation loop of ``pretrain``: seeded batches, clipped AdamW steps, held-out accuracy."""
    config, model = run.config, run.model
    rng = np.random.default_rng([config.seed, 4])
    generator = torch.Generator().manual_seed(config.seed)
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    start, cpu_start = time.perf_counter(), time.process_time()
    loss_value = float("nan")
    bar = tqdm(range(config.steps), desc="pretraining toy BLIP-2", disable=not progress, mininterval=1.0)
    model.train()
    for step in bar:
        for group in run.optimizer.param_groups:
            group["lr"] = run.lr_at(step)
        loss = run.loss(rng, generator)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        run.optimizer.step()
        loss_value = float(loss.detach())
        if run.heldout and (step + 1) % 500 == 0:
            acc = answer_accuracy(model, run.encoder, run.heldout_images, run.heldout)
            bar.set_postfix(loss=f"{loss_value:.3f}", heldout_digit=f"{acc:.3f}")
            model.train()
        elif step % 20 == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    result = {
        "steps": config.steps,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),  # what the loop costs on an idle machine
        "final_loss": round(loss_value, 4),
    }
    if run.heldout:
        result["heldout_digit_accuracy"] = round(
            answer_accuracy(model, run.encoder, run.heldout_images, run.heldout), 4
        )
    return result
