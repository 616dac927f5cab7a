"""Do a LiveEdit archive's experts work on questions rendered as EasyEdit's dataset and as its editor render them?

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/rendering_probe.py [--archive PATH] [--edits 256] [--split vqa_dev]

EasyEdit's ``VQADataset`` (what meta-training reads) wraps an image question in "Question: {} Short answer: ";
``MultimodalEditor`` (what edits and scores) joins the bare question and the answer with a space
(``easyedit_liveedit/questions.py``). For the first N records of ``--split`` (default
vqa_dev; the eval split is refused), each edit's own expert alone, at its soft
weight, answers its own question, with the edit and the question rendered both ways: ``dataset``
(``VQADataset.collate_fn``) and ``editor`` (``EditorQuestions``). Scored by EasyEdit's definition (the answer's
own tokens, teacher-forced), overall and per question kind. One torch thread. Prints one JSON object.
"""

from __future__ import annotations

import collections
import json
import statistics

import torch
from liveedit_speed import load_editor, probe_arguments
from torch.utils.data import DataLoader

from easyedit_liveedit.easyedit.questions import EditorQuestions
from easyedit_liveedit.liveedit.train_step import scored_positions


def per_row_accuracy(logits: torch.Tensor, labels: torch.Tensor, answer_tokens: list[int] | None) -> list[float]:
    where = scored_positions(labels, answer_tokens)
    hits = (logits.argmax(-1)[:, :-1] == labels[:, 1:]) & where[:, :-1]
    return (hits.sum(1) / where.sum(1)).tolist()


def main(argv: list[str] | None = None) -> None:
    args = probe_arguments(__doc__, edits=256, argv=argv)

    world, hparams, editor, archive = load_editor(args.archive)
    hparams.device = "cpu"
    from easyeditor import VQADataset

    with world.easyedit_patches():
        dataset = VQADataset(str(world.split(args.split)), size=args.edits, config=hparams)
    kinds = [r["kind"] for r in json.loads(world.split(args.split).read_text())[: args.edits]]
    results: dict[str, object] = {"archive": archive, "edits": args.edits}
    for rendering, data in (("dataset", dataset), ("editor", EditorQuestions(dataset))):
        scores = []
        with torch.no_grad():
            for batch in DataLoader(data, batch_size=32, collate_fn=data.collate_fn):
                edit = batch["edit_inner"]
                experts = editor.make_experts(edit)
                own = torch.eye(len(experts), dtype=torch.bool)
                out, _ = editor.forward_with_experts(edit, experts, own)
                scores += per_row_accuracy(out.logits, out.labels, edit.get("answer_tokens"))
        by_kind = collections.defaultdict(list)
        for kind, score in zip(kinds, scores, strict=True):
            by_kind[kind].append(score)
        results[rendering] = {"all": round(statistics.mean(scores), 3)} | {
            kind: round(statistics.mean(v), 3) for kind, v in sorted(by_kind.items())
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
