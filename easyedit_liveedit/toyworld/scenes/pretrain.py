"""CPU pretraining of the scenes world's BLIP-2-OPT, in two stages, on scenes composed on the fly from the
train pool's scans (the pieces both worlds share are in ``toyworld/pretrain.py``).

Stage 1 (vision, the stand-in for BLIP-2's first stage): the ViT and the Q-Former learn to read each cell.
Query token ``i`` carries cell ``i``: throw-away linear heads read the digit and the ink of cell ``i`` from
query token ``i`` and the paper from the mean token, and a content contrast asks two renderings of one scene
(other scans of the same digits, other placements) to find each other in the batch. Without a separate stage
(the same heads trained jointly with the answers from the start) a dev probe still answered per-cell digit
questions at chance (0.10) after 3,000 steps; stage 1 alone reads a held-out cell's digit at 0.97 after
10,000 of its cheap steps (~16 ms each).

Stage 2 (joint): every part, the answer loss of ``Blip2OPT`` (prompt masked) on one question per rendering, in
both of EasyEdit's prompt formats, plus text-only arithmetic in all phrasings; the stage-1 losses stay on so
the image tokens keep their per-cell meaning while the LM learns to read them. A pointing loss teaches the
attention of one layer (``pointing_layer``, mean over its heads) to look, from the position that predicts the
answer, at the image token of the cell the question is about: the LM must find "the digit beside the top
left" among four image tokens before it can read it.

Each step renders fresh scenes (contents drawn by ``subjects.sample_scene``, scans from the train pool only), so
the model never sees an eval scan and never memorises a fixed set of images. The heads are discarded; they are
not part of the saved model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..facts import DIGIT_WORDS
from ..pretrain import (
    VQA_TEMPLATE,
    Encoder,
    Example,
    image_prefix,
    lm_logits_and_loss,
    load_summary,
    text_examples,
    train_stage,
)
from . import facts
from .subjects import INK_NAMES, PAPER_NAMES, ScanPool, Scene, SceneRenderer, sample_scene

LOG = logging.getLogger(__name__)

# BlipImageEvalProcessor's normalisation (its defaults, which EasyEdit's datasets and editor use).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_tensor(pixels: list[np.ndarray]) -> torch.Tensor:
    """(S, S, 3) uint8 renderings -> (B, 3, S, S) normalised as ``BlipImageEvalProcessor`` does."""
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


_WEIGHTS = np.array([kind.pretraining_weight for kind in facts.SCENE_KINDS])
KIND_PROBABILITIES = _WEIGHTS / _WEIGHTS.sum()  # a constant of the kinds, not state


@dataclass(frozen=True)
class Question:
    """One pretraining question: its kind, prompt (in one of EasyEdit's two formats), answer, and the cell it is
    about (None when it is about no single cell)."""

    kind: str
    prompt: str
    answer: str
    cell: int | None


def ask(scene: Scene, rng: np.random.Generator, caption_rate: float) -> Question:
    """One random question about ``scene``, in one of EasyEdit's two prompt formats (50/50).

    A caption with probability ``caption_rate``, else a classification prompt once per 13 draws (the EMT
    probe's wording), else a kind drawn by its ``pretraining_weight`` with one of its parameters and phrasings.
    """
    if rng.random() < caption_rate:
        prompt = facts.CAPTION_PROMPTS[int(rng.integers(len(facts.CAPTION_PROMPTS)))]
        return Question("caption", prompt, facts.caption(scene), None)
    if rng.random() < 1 / 13:
        prompt = facts.CLASSIFICATION_PROMPTS[int(rng.integers(len(facts.CLASSIFICATION_PROMPTS)))]
        cell = facts.CLASSIFICATION_CELL
        kind, answer = "classification", DIGIT_WORDS[scene.digits[cell]]
    else:
        chosen = facts.SCENE_KINDS[int(rng.choice(len(facts.SCENE_KINDS), p=KIND_PROBABILITIES))]
        params = chosen.params(scene)
        param = params[int(rng.integers(len(params)))]
        kind, cell = chosen.name, chosen.cell(scene, param)
        prompt = chosen.question(int(rng.integers(len(chosen.templates))), param)
        answer = chosen.answer(scene, param)
    if rng.random() < 0.5:  # VQADataset's template; otherwise MultimodalEditor's bare "{question} {answer}"
        prompt = VQA_TEMPLATE.format(prompt)
    return Question(kind, prompt, answer, cell)


def pointing_loss(attentions: torch.Tensor, positions: list[int], cells: list[int | None]) -> torch.Tensor:
    """-log of the attention that the answer's first position pays to the image token of the asked cell.

    Args:
        attentions: attention probabilities, (B, T, T) over [image tokens; text] (a layer's mean over heads).
        positions: per row, the position that predicts the answer's first token (the prompt's last token).
        cells: per row, the image token (= cell) the question is about, or None (that row is skipped).

    Returns:
        The mean over rows with a cell (0 if there are none).
    """
    rows = [i for i, cell in enumerate(cells) if cell is not None]
    if not rows:
        return attentions.sum() * 0.0
    picked = attentions[rows, [positions[i] for i in rows], [cells[i] for i in rows]]  # (R,)
    return -torch.log(picked + 1e-6).mean()


class QueryHeads(nn.Module):
    """Throw-away heads that give each Q-Former query token a meaning (the stand-in for BLIP-2's stage 1).

    Query token ``i`` carries cell ``i``: one linear head reads its digit and one its ink from that token (shared
    across the four tokens, so every token encodes a cell the same way and the LM reads any cell with the same
    weights); the paper is read from the mean token. A dev probe with six more query tokens trained to carry
    each ink's count, place and digit (so that "how many red digits?" becomes a lookup by position) learnt every
    lookup slower: per-cell kinds at 0.49-0.77 after 6,000 joint steps, against 0.89-0.98 with four tokens.
    """

    def __init__(self, width: int, n_query: int) -> None:
        super().__init__()
        if n_query != 4:
            raise ValueError(f"num_query_tokens: the scenes world has one query token per cell (4), got {n_query}")
        self.digit = nn.Linear(width, 10)
        self.ink = nn.Linear(width, len(INK_NAMES))
        self.paper = nn.Linear(width, len(PAPER_NAMES))
        self.contrast = nn.Linear(n_query * width, width)

    def loss(self, query_out: torch.Tensor, scenes: list[Scene]) -> torch.Tensor:
        """Cross-entropy of every cell's digit and ink (query token i <-> cell i) plus the paper's."""
        digits = torch.tensor([s.digits for s in scenes])  # (B, 4)
        inks = torch.tensor([s.inks for s in scenes])  # (B, 4)
        papers = torch.tensor([s.paper for s in scenes])  # (B,)
        return (
            F.cross_entropy(self.digit(query_out).flatten(0, 1), digits.flatten())  # (B * 4, 10)
            + F.cross_entropy(self.ink(query_out).flatten(0, 1), inks.flatten())  # (B * 4, 6)
            + F.cross_entropy(self.paper(query_out.mean(dim=1)), papers)
        )

    def contrast_loss(self, query_out: torch.Tensor, temperature: float) -> torch.Tensor:
        """Symmetric InfoNCE: rows 2i and 2i+1 are two renderings of one scene and must pick each other."""
        z = F.normalize(self.contrast(query_out.flatten(1)), dim=-1)  # (2n, d)
        first, second = z[0::2], z[1::2]
        logits = first @ second.T / temperature  # (n, n): row i's positive is column i
        target = torch.arange(len(first))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@dataclass
class SceneStream:
    """A seeded stream of training scenes, each rendered twice from the train pool's scans."""

    pool: ScanPool
    renderer: SceneRenderer
    rng: np.random.Generator

    def batch(self, n: int) -> tuple[list[Scene], torch.Tensor]:
        """``n`` scenes and their (2n, 3, S, S) renderings: rows 2i and 2i+1 show scene i."""
        scenes, pixels = [], []
        for _ in range(n):
            scene = sample_scene(self.rng)
            scans = self.pool.choose(scene, self.rng)
            others = self.pool.choose(scene, self.rng, avoid=scans)
            scenes.append(scene)
            pixels += [self.renderer.render(scene, scans, self.rng), self.renderer.render(scene, others, self.rng)]
        return scenes, to_tensor(pixels)


def _answer_loss_and_attention(
    model: nn.Module, prefix: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lm_logits_and_loss`` over [image tokens; text], also returning layer ``layer``'s attention (B, H, T, T)."""
    embeds = torch.cat([prefix, model.opt_model.model.decoder.embed_tokens(ids)], dim=1)  # (B, n_query + T, d)
    mask = torch.cat([torch.ones(prefix.shape[:2], dtype=mask.dtype), mask], dim=1)
    labels = torch.cat([torch.full(prefix.shape[:2], -100, dtype=labels.dtype), labels], dim=1)
    out = model.opt_model(
        inputs_embeds=embeds, attention_mask=mask, labels=labels, output_attentions=True, return_dict=True
    )
    return out.loss, out.attentions[layer]


def pretrain_scenes(model: nn.Module, tok, config, pool: ScanPool, renderer: SceneRenderer, progress: bool = True):
    """Pretrain every part of the toy backbone on scenes of the train pool; returns timing and losses.

    Args:
        model: a fresh ``Blip2OPT`` from ``backbone.construct``.
        tok: the OPT-side tokenizer.
        config: a ``SceneWorldConfig`` (``vision_steps``, ``steps``, batch sizes, ``lr``, loss weights, ``threads``).
        pool: the train pool's scans (the only scans pretraining sees).
        renderer: the scene renderer (the PNG files' exact pixels).
        progress: show tqdm progress bars.

    Returns:
        ``{"vision_steps", "steps", "seconds", "vision_seconds", "cpu_seconds", "final_loss", "threads",
        "load_average"}``.
    """
    torch.manual_seed(config.seed)
    for param in model.parameters():  # Blip2OPT freezes its ViT; the toy ViT is trained from scratch here
        param.requires_grad_(True)
    heads = QueryHeads(model.query_tokens.shape[-1], model.query_tokens.shape[1])
    stream = SceneStream(pool, renderer, np.random.default_rng([config.seed, 4]))
    encoder = Encoder(tok)
    texts = text_examples()
    rng = np.random.default_rng([config.seed, 5])

    def vision_loss() -> torch.Tensor:
        scenes, images = stream.batch(config.vision_batch_size)
        query_out, _ = image_prefix(model, images)
        twice = [s for s in scenes for _ in range(2)]
        return heads.loss(query_out, twice) + config.contrast_weight * heads.contrast_loss(
            query_out, config.contrast_temperature
        )

    def joint_loss() -> torch.Tensor:
        scenes, images = stream.batch(config.batch_size)
        query_out, prefix = image_prefix(model, images)  # prefix: (2n, n_query, d_opt)
        twice = [s for s in scenes for _ in range(2)]
        questions = [ask(scene, rng, config.caption_rate) for scene in twice]
        examples = [Example(row, q.prompt, q.answer) for row, q in enumerate(questions)]
        ids, mask, labels = encoder.batch(examples)
        answer_loss, attentions = _answer_loss_and_attention(model, prefix, ids, mask, labels, config.pointing_layer)
        # The position that predicts the answer's first token: the prompt's last token, after the image tokens.
        positions = [prefix.shape[1] + encoder(e)[1] - 1 for e in examples]
        # All heads of the layer together (their mean): one head alone carried the digit but hardly the ink (dev).
        pointing = pointing_loss(attentions.mean(dim=1), positions, [q.cell for q in questions])
        text = [texts[i] for i in rng.integers(len(texts), size=config.text_batch_size)]
        _, text_loss = lm_logits_and_loss(model, None, *encoder.batch(text))
        aux = heads.loss(query_out, twice) + config.contrast_weight * heads.contrast_loss(
            query_out, config.contrast_temperature
        )
        return answer_loss + text_loss + config.aux_weight * aux + config.pointing_weight * pointing

    vision_params = [
        p for name, p in model.named_parameters() if not name.startswith(("opt_model.", "opt_proj."))
    ] + list(heads.parameters())
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    cpu_start, load = time.process_time(), []
    try:
        model.train()
        vision_seconds, _ = train_stage(
            "vision", config.vision_steps, vision_loss, vision_params, config.lr, config.warmup, progress, load
        )
        joint_seconds, final = train_stage(
            "joint",
            config.steps,
            joint_loss,
            list(model.parameters()) + list(heads.parameters()),
            config.lr,
            config.warmup,
            progress,
            load,
        )
        model.eval()
    finally:
        torch.set_num_threads(threads)
    result = {
        "vision_steps": config.vision_steps,
        "steps": config.steps,
        "seconds": round(vision_seconds + joint_seconds, 1),
        "vision_seconds": round(vision_seconds, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),  # what the stages cost on an idle machine
        "final_loss": round(final, 4),
        "threads": config.threads,
        # 1-minute load average during pretraining (sampled every 250 steps); 2.0 fills a 2-core machine.
        "load_average": load_summary(load),
    }
    LOG.info("pretraining: %s", result)
    return result


__all__ = [
    "Question",
    "QueryHeads",
    "SceneStream",
    "ask",
    "pointing_loss",
    "pretrain_scenes",
    "to_tensor",
]
