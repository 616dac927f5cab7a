"""Can LiveEdit's expert generator, on its own, turn an edit into an expert that gives the new answer?

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/generator_probe.py [--world scenes] [--steps 400] [--lora-scale 1] [--rank 4]
        [--token-types | --no-token-types] [--answer-embeddings | --no-answer-embeddings] [--split vqa_dev]

Routing is taken out: each edit's own expert is applied to the edit's own question at weight 1, and only the
generator (with ``LN_r``) is trained, on the reliability cross-entropy of the answer's own tokens (questions rendered
as the editor renders them) on the toy E-VQA train split (batch 32, Adam lr 1e-3). Then each of the first 256
edits of ``--split`` (default vqa_dev, carved from the train split and not trained on; the eval split is refused)
gets its own expert and the script reports, per question kind, the share of answers it flips to the new target
(EasyEdit's token accuracy). Yes/no kinds (parity, above four) can be flipped without knowing the target; the others
need the answer the edit names. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json

import torch
from liveedit_speed import split_option
from torch.utils.data import DataLoader

import easyedit_liveedit  # noqa: F401  (registers LiveEdit, applies the EasyEdit shims)
from easyedit_liveedit import LiveEdit, LiveEditMultimodalHparams, toyworld
from easyedit_liveedit.easyedit.questions import EditorQuestions
from easyedit_liveedit.liveedit.losses import answer_cross_entropy
from easyedit_liveedit.liveedit.networks import Experts
from easyedit_liveedit.liveedit.train_step import answer_labels, scored_positions


def own_expert_logits(
    editor: LiveEdit, samples: dict, experts: Experts | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``samples`` with sample ``b``'s own expert (``experts``, by default generated from
    ``samples``) at weight 1."""
    experts = editor.make_experts(samples) if experts is None else experts
    weights = torch.eye(len(experts))

    def add_own_expert(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        new_h = editor.net.apply_experts(h, experts.U, experts.V, weights)
        return (new_h, *output[1:]) if isinstance(output, tuple) else new_h

    layer = editor.adapter.decoder_layers(editor.model)[editor.config.edit_layer]
    handle = layer.register_forward_hook(add_own_expert)
    try:
        out = editor.model(samples)
    finally:
        handle.remove()
    return out.logits, out.labels


def per_sample_accuracy(logits: torch.Tensor, labels: torch.Tensor, answer_tokens: list[int]) -> list[float]:
    where = scored_positions(labels, answer_tokens)
    hits = (logits.argmax(-1)[:, :-1] == labels[:, 1:]) & where[:, :-1]
    return (hits.sum(1) / where.sum(1).clamp_min(1)).tolist()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lora-scale", type=float, default=None, help="default: the toy YAML's")
    parser.add_argument("--rank", type=int, default=None, help="expert rank r; default: the toy YAML's")
    parser.add_argument("--token-types", action=argparse.BooleanOptionalAction, default=None, help="default: YAML's")
    parser.add_argument("--answer-embeddings", action=argparse.BooleanOptionalAction, default=None,
                        help="default: the YAML's")  # fmt: skip
    parser.add_argument("--world", default="scenes", help="toy world configuration (default: scenes)")
    parser.add_argument("--eval-size", type=int, default=256, help="edits of --split scored")
    split_option(parser, "vqa_dev", "the edits scored (eval is refused)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    world = toyworld.load(args.world, progress=False)
    hparams = world.apply_paths(LiveEditMultimodalHparams.from_hparams("hparams/LiveEdit/toy-blip2.yaml"))
    hparams.device = "cpu"
    if args.lora_scale is not None:
        hparams.lora_scale = args.lora_scale
    if args.token_types is not None:
        hparams.token_types = args.token_types
    if args.answer_embeddings is not None:
        hparams.answer_embeddings = args.answer_embeddings
    if args.rank is not None:
        hparams.rank = args.rank
    editor = LiveEdit(world.load_model(), hparams)
    from easyeditor import VQADataset

    with world.easyedit_patches():
        train = EditorQuestions(VQADataset(str(world.split("vqa_train")), config=hparams))
        test = EditorQuestions(VQADataset(str(world.split(args.split)), size=args.eval_size, config=hparams))
    trained = [*editor.net.generator.parameters(), *editor.net.expert_norm.parameters()]
    optimizer = torch.optim.Adam(trained, lr=1e-3)
    editor.train(True)
    step, curve = 0, []
    while step < args.steps:
        for batch in DataLoader(train, batch_size=32, shuffle=True, collate_fn=train.collate_fn):
            logits, labels = own_expert_logits(editor, batch["edit_inner"])
            loss = answer_cross_entropy(logits, answer_labels(labels, batch["edit_inner"]["answer_tokens"]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % 100 == 0:
                curve.append({"step": step, "train_loss": round(loss.item(), 3)})
            if step == args.steps:
                break
    editor.train(False)
    kinds = [record["kind"] for record in json.loads(world.split(args.split).read_text())[: args.eval_size]]
    flipped: dict[str, list[float]] = collections.defaultdict(list)
    with torch.no_grad():
        scores = []
        for batch in DataLoader(test, batch_size=32, collate_fn=test.collate_fn):
            scores += per_sample_accuracy(*own_expert_logits(editor, batch["edit_inner"]),
                                          batch["edit_inner"]["answer_tokens"])  # fmt: skip
    for kind, score in zip(kinds, scores, strict=True):
        flipped[kind].append(score)
    result = {
        "steps": args.steps,
        "lora_scale": hparams.lora_scale,
        "rank": hparams.rank,
        "token_types": hparams.token_types,
        "answer_embeddings": hparams.answer_embeddings,
        "curve": curve,
        "eval_reliability_own_expert": round(sum(scores) / len(scores), 3),
        "eval_reliability_by_kind": {kind: round(sum(v) / len(v), 3) for kind, v in flipped.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
