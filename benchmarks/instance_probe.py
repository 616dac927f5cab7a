"""Do the digits world's image tokens describe the scan, or only its digit? (An MMEdit edit is about one image.)

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/instance_probe.py [--layer 2] [--steps 3000] [--split vqa_dev]

Trains a linear key (InfoNCE between a scan and its other view) on the layer-``l_e`` image tokens of the train
scans, then asks, for each scan of ``--split`` (default vqa_dev: scans carved from the train pool, in no train
record and never seen in pretraining; the eval split is refused), whether the nearest canonical scan of that split
to its other view (``image_rephrase``) is the scan itself. Also reports the same retrieval on raw pixels and the
digit of the nearest scan. The backbone is frozen; only the probe is trained. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from liveedit_speed import split_option
from PIL import Image

import easyedit_liveedit  # noqa: F401  (registers LiveEdit, applies the EasyEdit shims)
from easyedit_liveedit import LiveEdit, LiveEditMultimodalHparams, toyworld


def image_tokens(world: toyworld.ToyWorld, editor: LiveEdit, split: str) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Flattened layer-``l_e`` image tokens of each distinct scan of ``split`` and of its other view."""
    from easyeditor import VQADataset

    records = json.loads(world.split(split).read_text())
    first = {}
    for i, record in enumerate(records):
        first.setdefault(record["image"], i)
    rows = sorted(first.values())
    with world.easyedit_patches():
        data = VQADataset(str(world.split(split)), config=editor.config)
        scans, views = [], []
        for start in range(0, len(rows), 100):
            batch = data.collate_fn([data[i] for i in rows[start : start + 100]])
            for key, out in (("edit_inner", scans), ("edit_outer_image", views)):
                h, layout = editor.hidden_states(batch[key])
                out.append(h[layout.image].view(h.shape[0], -1))
    return torch.cat(scans), torch.cat(views), [records[i] for i in rows]


def retrieval_accuracy(queries: torch.Tensor, keys: torch.Tensor) -> float:
    """Share of rows whose most similar key (cosine) is their own."""
    sim = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T
    return (sim.argmax(1) == torch.arange(len(keys))).float().mean().item()


def pixels(world: toyworld.ToyWorld, paths: list[str]) -> torch.Tensor:
    size = world.config.image_size
    load = [np.asarray(Image.open(world.layout.images / p).convert("L").resize((size, size))) for p in paths]
    x = torch.tensor(np.stack(load), dtype=torch.float32).flatten(1)
    return x - x.mean(1, keepdim=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3000)
    split_option(parser, "vqa_dev", "the held-out scans retrieved among each other (eval is refused)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    world = toyworld.load("digits", progress=False)
    hparams = world.apply_paths(LiveEditMultimodalHparams.from_hparams("hparams/LiveEdit/toy-blip2.yaml"))
    hparams.edit_layer = args.layer
    editor = LiveEdit(world.load_model(), hparams)
    with torch.no_grad():
        train_scans, train_views, _ = image_tokens(world, editor, "vqa_train")
        eval_scans, eval_views, eval_records = image_tokens(world, editor, args.split)
    mean, std = train_scans.mean(0), train_scans.std(0) + 1e-5
    probe = torch.nn.Linear(train_scans.shape[1], 128)
    optimizer = torch.optim.Adam(probe.parameters(), 1e-3)
    for _ in range(args.steps):
        rows = torch.randint(len(train_scans), (128,))
        a = F.normalize(probe((train_views[rows] - mean) / std), dim=1)
        b = F.normalize(probe((train_scans[rows] - mean) / std), dim=1)
        loss = F.cross_entropy(a @ b.T / 0.05, torch.arange(128))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        keys, queries = probe((eval_scans - mean) / std), probe((eval_views - mean) / std)
        sim = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T
        labels = torch.tensor([r["label"] for r in eval_records])
        rank_of_own = (sim > sim.diagonal()[:, None]).sum(1).float() + 1
        result = {
            "split": args.split,
            "held_out_scans": len(eval_records),
            "layer": args.layer,
            "linear_probe_view_to_scan": round(retrieval_accuracy(queries, keys), 4),
            "linear_probe_median_rank_of_own": rank_of_own.median().item(),
            "linear_probe_digit_of_nearest": round((labels[sim.argmax(1)] == labels).float().mean().item(), 4),
            "raw_tokens_view_to_scan": round(retrieval_accuracy(eval_views - mean, eval_scans - mean), 4),
            "pixels_view_to_scan": round(
                retrieval_accuracy(
                    pixels(world, [r["image_rephrase"] for r in eval_records]),
                    pixels(world, [r["image"] for r in eval_records]),
                ),
                4,
            ),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
