"""How well does LiveEdit's visual hard filter separate an input's own expert from the others after N edits?

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/filter_margins.py [--archive PATH] [--edits 300] [--split vqa_dev]

The experts of the first N records of `--split` (default vqa_dev; the eval split is refused) are made with the toy
editing YAML's archive. For each record's `src`, `rephrase`, `image_rephrase` and `m_loc` input it prints the
margin `sim(phi_in, phi_m) - sim(phi_in, phi_sentinel)` (an expert fires when it is positive) of the record's own
expert (quantiles), of the strongest other expert (quantiles), and how many other experts fire per input. The own
expert of an `m_loc` input is the record whose edit it is not about: it must not fire. One JSON object per kind.
"""

from __future__ import annotations

import json

import torch
from liveedit_speed import load_editor, probe_arguments

from easyedit_liveedit.liveedit.routing import paired_similarity, similarity
from easyedit_liveedit.toyworld.evaluate import ImageLoader

INPUTS = {  # input kind -> (image, question, answer) fields of an MMEdit record
    "src": ("image", "src", "alt"),
    "rephrase": ("image", "rephrase", "alt"),
    "image_rephrase": ("image_rephrase", "src", "alt"),
    "m_loc": ("m_loc", "m_loc_q", "m_loc_a"),
}


def main() -> None:
    args = probe_arguments(__doc__, edits=300)
    from easyeditor.evaluate import prepare_multimodal_edit

    world, hparams, editor, _ = load_editor(args.archive)
    records = json.loads(world.split(args.split).read_text())[: args.edits]
    load, tok = ImageLoader(world.layout.images, world.config.image_size), world.tokenizer()

    def batch(rows: list[dict], fields: tuple[str, str, str]) -> dict:
        image, question, answer = fields
        made = [prepare_multimodal_edit(hparams, tok, r[answer], r[question], load(r[image])[None]) for r in rows]
        return {"image": torch.cat([s["image"] for s in made]), "text_input": [s["text_input"][0] for s in made],
                "prompts_len": [s["prompts_len"][0] for s in made], "labels": [""] * len(made)}  # fmt: skip

    with torch.no_grad():
        chunks = [records[i : i + 30] for i in range(0, len(records), 30)]
        phi = torch.cat([editor.make_experts(batch(chunk, INPUTS["src"])).phi for chunk in chunks])  # (N, k, d_m)
        for kind, fields in INPUTS.items():
            own, strongest, firing = [], [], []
            for start, chunk in zip(range(0, len(records), 30), chunks, strict=True):
                h, layout = editor.hidden_states(batch(chunk, fields))
                keys = editor.net.input_keys(h, layout.image, layout.prompt)
                margins = similarity(keys.phi, phi) - paired_similarity(keys.phi, keys.sentinel)[:, None]  # (b, N)
                rows = torch.arange(len(chunk))
                own += margins[rows, start + rows].tolist()
                others = margins.clone()
                others[rows, start + rows] = float("-inf")
                strongest += others.max(dim=1).values.tolist()
                firing += (others > 0).sum(dim=1).tolist()
            print(json.dumps({"input": kind, "experts": len(records), "own": _quantiles(own),
                              "strongest_other": _quantiles(strongest),
                              "others_firing_per_input": round(sum(firing) / len(firing), 3)}))  # fmt: skip


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {f"q{round(p * 100):02d}": round(ordered[int(p * (len(ordered) - 1))], 3) for p in (0.01, 0.05, 0.5, 0.95)}


if __name__ == "__main__":
    main()
