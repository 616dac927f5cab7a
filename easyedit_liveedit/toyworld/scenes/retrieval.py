"""Retrieval of a subject from its other rendering: the scenes world's measure of whether the image tokens tell
subjects apart, which LiveEdit's visual router needs (an MMEdit edit is about one subject).

Written once into the world's manifest on the eval split at build time (``scenes/build.py``); probes measure the
dev split (``benchmarks/world_probe.py``).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch

from ..evaluate import ImageLoader
from ..layout import Layout
from ..pretrain import image_prefix


@torch.no_grad()
def retrieval(model: torch.nn.Module, layout: Layout, image_size: int, split: str, layers: Sequence[int] = ()) -> dict:
    """Top-1 of each subject's ``image_rephrase`` among the canonical renderings of all subjects of ``split``.

    ``split`` is ``eval`` (the world's final figure, written once into its manifest) or ``dev`` (what probes
    read): its E-VQA and E-IC subjects together. Nearest neighbour (Euclidean) on the image tokens the OPT sees
    (the Q-Former output after ``opt_proj``), flattened over the query tokens and mean-pooled, and on the hidden
    states at the image positions of each OPT layer in ``layers``. No key is fitted.
    """
    model.eval()
    records = [r for kind in ("vqa", "caption") for r in json.loads(layout.split(f"{kind}_{split}").read_text())]
    loader = ImageLoader(layout.images, image_size)  # EasyEdit's processor
    features: dict[str, list[list[torch.Tensor]]] = defaultdict(lambda: [[], []])
    for start in range(0, len(records), 256):
        chunk = records[start : start + 256]
        for side, key in enumerate(("image", "image_rephrase")):
            pixels = torch.stack([loader(r[key]) for r in chunk])
            _, tokens = image_prefix(model, pixels)  # (B, n_query, d_opt): what Blip2OPT feeds the OPT
            features["opt_proj_flat"][side].append(tokens.flatten(1))
            features["opt_proj_mean"][side].append(tokens.mean(1))
            if not layers:
                continue
            mask = torch.ones(tokens.shape[:2], dtype=torch.long)
            # Image tokens come first and OPT is causal, so their hidden states do not depend on any text.
            hidden = model.opt_model.model.decoder(
                inputs_embeds=tokens, attention_mask=mask, output_hidden_states=True, return_dict=True
            ).hidden_states  # embeddings, then each layer's output
            for layer in layers:
                features[f"opt_layer{layer}_flat"][side].append(hidden[layer + 1].flatten(1))
    out = {"split": split, "subjects": len(records), "metric": "nearest neighbour, Euclidean, no fitted key"}
    for name, (keys, queries) in features.items():
        keys, queries = torch.cat(keys), torch.cat(queries)  # (n, D)
        hits = torch.cdist(queries, keys).argmin(1) == torch.arange(len(keys))
        out[name] = round(float(hits.float().mean()), 4)
        if name == "opt_proj_flat":
            misses = Counter(r["kind"] for r, hit in zip(records, hits.tolist(), strict=True) if not hit)
            out["opt_proj_flat_misses_by_kind"] = dict(misses)
    return out
