"""How fast does LiveEdit's meta-training learn to edit? Dev-split learning curves against training steps.

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/learning_curve.py [--arrangement ours|authors] [--steps 1200] [--every 200]
        [--answer-embeddings | --no-answer-embeddings] [--v-oracle] [--world scenes] [--split vqa_dev]

Trains a fresh LiveEdit with the full meta-training step (``meta_losses`` + ``liveedit_loss``, the trainer's step
without EasyEdit's loop) on the toy world's train split and, every ``--every`` steps, scores the first
``--eval-size`` edits of ``--split`` (default the dev split; the eval split is refused) two ways:

* ``own``: each edit's own expert alone at weight 1 (no routing): can the generator write the new answer?
* ``routed``: the real inference path, hard + soft routing, with the edits stored in fresh libraries of 8
  (``routed_accuracies``): Reliability, T-Gen, M-Gen, T-Loc and M-Loc as EasyEdit's metric counts them.

Arrangements: ``ours`` is the toy training YAML (batch 32, Adam 1e-3); ``authors`` is the authors' (batch 8, Adam
1e-4, x0.1 after 10,000 steps). ``--v-oracle`` replaces each generated ``V`` by a learned table row indexed by the
new answer's first token (``U`` still generated): the ceiling the generator is measured against (it knows the
answer by construction). Prints one JSON object; one torch thread.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from generator_probe import own_expert_logits, per_sample_accuracy
from liveedit_speed import split_option
from torch import nn
from torch.utils.data import DataLoader

import easyedit_liveedit  # noqa: F401  (registers LiveEdit, applies the EasyEdit shims)
from easyedit_liveedit import LiveEdit, LiveEditMultimodalTrainingHparams, toyworld
from easyedit_liveedit.easyedit.questions import EditorQuestions
from easyedit_liveedit.liveedit.losses import liveedit_loss
from easyedit_liveedit.liveedit.networks import Experts
from easyedit_liveedit.liveedit.train_step import IGNORE_INDEX, answer_labels, meta_losses, routed_accuracies

ARRANGEMENTS = {
    "ours": {},  # the toy training YAML as it is
    "authors": {"batch_size": 8, "lr": 1e-4, "lr_decay_steps": 10000, "lr_decay_rate": 0.1},
}
ROUTED = ("inner/acc", "edit/acc", "image_rephrase/acc", "loc/acc", "image_loc/acc")


class VOracle(nn.Module):
    """``V`` looked up by the new answer's first token instead of generated: the generator's ceiling."""

    def __init__(self, editor: LiveEdit) -> None:
        super().__init__()
        vocab = len(editor.adapter.tokenizer(editor.model))
        self.rank, self.width = editor.config.rank, editor.net.hidden_size
        self.table = nn.Embedding(vocab, self.rank * self.width)
        nn.init.normal_(self.table.weight, std=0.02)

    def __call__(self, editor: LiveEdit, samples: dict) -> Experts:
        experts = editor.make_experts(samples)
        out_labels = answer_labels(_input_labels(editor, samples), samples["answer_tokens"])
        first = torch.stack([row[row != IGNORE_INDEX][0] for row in out_labels])  # (B,) first answer token
        V = self.table(first).view(-1, self.rank, self.width)
        return Experts(psi=experts.psi, phi=experts.phi, U=experts.U, V=V)


def _input_labels(editor: LiveEdit, samples: dict) -> torch.Tensor:
    with torch.no_grad():
        return editor.model(samples).labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrangement", choices=sorted(ARRANGEMENTS), default="ours")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--every", type=int, default=200, help="score every this many steps")
    parser.add_argument("--eval-size", type=int, default=128, help="edits of --split scored")
    parser.add_argument("--answer-embeddings", action=argparse.BooleanOptionalAction, default=None,
                        help="default: the training YAML's")  # fmt: skip
    parser.add_argument("--v-oracle", action="store_true", help="V from a table indexed by the answer (own only)")
    parser.add_argument("--world", default="scenes", help="toy world configuration (default: scenes)")
    parser.add_argument("--seed", type=int, default=0)
    split_option(parser, "vqa_dev", "the edits scored (eval is refused)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    world = toyworld.load(args.world, progress=False)
    hparams = LiveEditMultimodalTrainingHparams.from_hparams("hparams/TRAINING/LiveEdit/toy-blip2.yaml")
    hparams = world.apply_paths(hparams)
    hparams.device = "cpu"
    for key, value in ARRANGEMENTS[args.arrangement].items():
        setattr(hparams, key, value)
    if args.answer_embeddings is not None:
        hparams.answer_embeddings = args.answer_embeddings
    editor = LiveEdit(world.load_model(), hparams)
    from easyeditor import VQADataset

    with world.easyedit_patches():
        train = EditorQuestions(VQADataset(str(world.split("vqa_train")), config=hparams))
        dev = EditorQuestions(VQADataset(str(world.split(args.split)), size=args.eval_size, config=hparams))
    oracle = VOracle(editor) if args.v_oracle else None
    trained = [*editor.outer_parameters(), *(oracle.parameters() if oracle else [])]
    optimizer = torch.optim.Adam(trained, lr=hparams.lr)
    milestones = [] if hparams.lr_decay_steps is None else [hparams.lr_decay_steps]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, hparams.lr_decay_rate)
    dev_batches = [b for b in DataLoader(dev, batch_size=8, collate_fn=dev.collate_fn)]
    curve, step, started = [], 0, time.perf_counter()
    while step < args.steps:
        for batch in DataLoader(train, batch_size=hparams.batch_size, shuffle=True, collate_fn=train.collate_fn):
            editor.train(True)
            if oracle is None:
                terms, _ = meta_losses(editor, batch, filter_loss=hparams.filter_lambda > 0)
                loss, _ = liveedit_loss(terms, **editor.config.loss_options())
            else:  # the ceiling: own expert alone, V from the table
                samples = batch["edit_inner"]
                logits, labels = own_expert_logits(editor, samples, oracle(editor, samples))
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1), answer_labels(labels, samples["answer_tokens"])[:, 1:].flatten()
                )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, hparams.grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            if step % args.every == 0 or step == args.steps:
                curve.append(
                    {
                        "step": step,
                        "seconds": round(time.perf_counter() - started),
                        **_score(editor, dev_batches, oracle),
                    }
                )
                print(json.dumps(curve[-1]), flush=True)
            if step == args.steps:
                break
    print(json.dumps({"arrangement": args.arrangement, "batch_size": hparams.batch_size, "lr": hparams.lr,
                      "answer_embeddings": hparams.answer_embeddings, "v_oracle": args.v_oracle, "split": args.split,
                      "eval_size": args.eval_size, "curve": curve}, indent=1))  # fmt: skip


@torch.no_grad()
def _score(editor: LiveEdit, batches: list[dict], oracle: VOracle | None) -> dict[str, float]:
    editor.train(False)
    own: list[float] = []
    routed: dict[str, list[float]] = {name: [] for name in ROUTED}
    for batch in batches:
        samples = batch["edit_inner"]
        experts = oracle(editor, samples) if oracle is not None else None
        own += per_sample_accuracy(*own_expert_logits(editor, samples, experts), samples["answer_tokens"])
        if oracle is None:
            for name, value in routed_accuracies(editor, batch).items():
                routed[name].append(value)
    scores = {"own": round(sum(own) / len(own), 3)}
    scores.update({f"routed {name}": round(sum(v) / len(v), 3) for name, v in routed.items() if v})
    return scores


if __name__ == "__main__":
    main()
