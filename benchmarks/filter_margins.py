"""How well does LiveEdit's visual hard filter separate an input's own expert from the others after N edits?

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/filter_margins.py [--archive PATH] [--edits 300] [--split vqa_dev]

The experts of the first N records of `--split` (default vqa_dev; the eval split is refused) are made with the toy
editing YAML's archive. For each record's `src`, `rephrase`, `image_rephrase` and `m_loc` input it prints the
margin `sim(phi_in, phi_m) - sim(phi_in, phi_sentinel)` (an expert fires when it is positive) of the record's own
expert (quantiles), of the strongest other expert (quantiles), how many other experts fire per input, and how often
the own expert has the largest margin of all (`own_ranked_first`: does the visual key identify the edit at all?). The
own expert of an `m_loc` input is the record whose edit it is not about: it must not fire. One JSON object per kind.

Then a ceiling from the backbone itself (`"input": "image_states"`): the edit layer's states at the image tokens
(which, being first in the sequence, depend on the image alone), concatenated, centred on the edits' mean, compared
by cosine. How often the other view of an edit's image (`image_rephrase`) is nearest to its own edit's image, and for
a few thresholds on that cosine how many own edits a filter on it would keep, how many other edits it would let
through per view, and the share of `m_loc` images some edit would pass: what a visual key could know.
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
            report = {"input": kind, "experts": len(records), "own": _quantiles(own),
                      "strongest_other": _quantiles(strongest),
                      "others_firing_per_input": round(sum(firing) / len(firing), 3)}  # fmt: skip
            if kind != "m_loc":  # an unrelated image has no own expert to identify
                first = sum(o > s for o, s in zip(own, strongest, strict=True))
                report["own_ranked_first"] = round(first / len(own), 3)
            print(json.dumps(report))
        print(json.dumps(_image_state_ceiling(editor, records, batch, chunks)))


def _image_state_ceiling(editor, records: list[dict], batch, chunks: list[list[dict]]) -> dict:
    """The backbone's own image-token states as a visual key (module docstring): identification and thresholds."""

    def states(fields: tuple[str, str, str]) -> torch.Tensor:
        rows = []
        for chunk in chunks:
            h, layout = editor.hidden_states(batch(chunk, fields))
            rows += [h[b][layout.image[b]].flatten() for b in range(len(h))]
        return torch.stack(rows)  # (N, image tokens * d)

    edits = states(INPUTS["src"])
    centre = edits.mean(dim=0)

    def cosine(a: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize
        return unit(a - centre, dim=1) @ unit(edits - centre, dim=1).T

    views, unrelated = cosine(states(INPUTS["image_rephrase"])), cosine(states(INPUTS["m_loc"]))  # (N, N) each
    own = views.diagonal()
    others = ~torch.eye(len(records), dtype=torch.bool)
    sweep = {f"{t:.2f}": {"own_kept": round((own > t).float().mean().item(), 3),
                          "others_per_view": round(((views > t) & others).sum(dim=1).float().mean().item(), 3),
                          "m_loc_with_any": round((unrelated > t).any(dim=1).float().mean().item(), 3)}
             for t in (0.6, 0.7, 0.75, 0.8)}  # fmt: skip
    first = ((views > own[:, None]) & others).sum(dim=1) == 0
    return {"input": "image_states", "experts": len(records),
            "view_ranked_first": round(first.float().mean().item(), 3), "thresholds": sweep}  # fmt: skip


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {f"q{round(p * 100):02d}": round(ordered[int(p * (len(ordered) - 1))], 3) for p in (0.01, 0.05, 0.5, 0.95)}


if __name__ == "__main__":
    main()
