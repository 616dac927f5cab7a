"""The expert library at scale: bytes per expert, pre-filter recall, and LiveEdit's added time at real widths.

Usage (from the project root, after `make setup`; `pip install faiss-cpu` for the pre-filter):
    .venv/bin/python benchmarks/library_scale.py keys   [--archive PATH]   # real routing keys of the toy world
    .venv/bin/python benchmarks/library_scale.py bytes                     # bytes per expert, BLIP-2 / LLaVA width
    .venv/bin/python benchmarks/library_scale.py recall [--experts 1000000]
    .venv/bin/python benchmarks/library_scale.py speed  [--widths 2560 4096] [--experts 1000 100000 1000000]

Each prints one JSON object (and `keys` writes results/library_scale/keys.pt, which `recall` reads).

- keys: the default toy world's edits (eval + train records, one expert each) through a trained LiveEdit archive,
  and four input queries per record (the edit question, its text rephrase, its image rephrase, the unrelated
  multimodal-locality question), each with its input visual key and sentinel key.
- recall: a library of the real edit keys padded with noisy copies up to --experts; for every query the experts the
  exact hard filter keeps, and the candidates of the faiss pre-filter (re-checked exactly); recall = kept pairs the
  pre-filter path also keeps / kept pairs of the exact path.
- speed: per input at width d (BLIP-2-OPT-2.7B 2560 / 32 layers, LLaVA-7B 4096 / 32 layers; d_m 1024, k 4, r 4)
  LiveEdit's added time (input keys over a 600-token sequence, routing, applying the kept experts) against the
  decoder stack (one randomly initialised transformers decoder layer at that width and length, timed, times the
  layer count), and routing against one streaming read of the same key bytes timed in the same run.
All times are medians of --repeats runs on torch with --threads threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

LOG = logging.getLogger("library_scale")
OUT = Path("results/library_scale")
QUERY_KINDS = ("edit", "rephrase", "image_rephrase", "m_loc")


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall-clock milliseconds of ``fn``."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return 1e3 * statistics.median(runs)


# ----------------------------------------------------------------------------------------- keys
@torch.no_grad()
def extract_keys(archive: str | None, batch: int = 64) -> dict[str, object]:
    """Edit keys and query keys of every eval and train record of the default toy world."""
    sys.path.insert(0, str(Path(__file__).parent))
    from liveedit_speed import batch_of, load_editor  # first: imports easyedit_liveedit, which shims EasyEdit

    from easyedit_liveedit.toyworld.evaluate import ImageLoader
    from easyeditor.evaluate.evaluate import prepare_multimodal_edit

    world, hparams, editor, archive = load_editor(archive)
    records = [r for split in ("vqa_eval", "vqa_train") for r in json.loads(world.split(split).read_text())]
    load = ImageLoader(world.layout.images, world.config.image_size)
    tok = world.tokenizer()
    views = {  # query kind -> (prompt field, image field)
        "edit": ("src", "image"),
        "rephrase": ("rephrase", "image"),
        "image_rephrase": ("src", "image_rephrase"),
        "m_loc": ("m_loc_q", "m_loc"),
    }
    edit_phi, edit_psi = [], []
    queries: dict[str, dict[str, list]] = {kind: {"phi": [], "psi": [], "sentinel": []} for kind in views}
    start = time.perf_counter()
    for first in range(0, len(records), batch):
        chunk = records[first : first + batch]
        samples = batch_of([prepare_multimodal_edit(hparams, tok, r["alt"], r["src"], load(r["image"])) for r in chunk])
        experts = editor.make_experts(samples)
        edit_phi.append(experts.phi)
        edit_psi.append(experts.psi)
        for kind, (prompt, image) in views.items():
            samples = batch_of(
                [prepare_multimodal_edit(hparams, tok, r["alt"], r[prompt], load(r[image])) for r in chunk]
            )
            h, layout = editor.hidden_states(samples)
            keys = editor.net.input_keys(h, layout.image, layout.prompt)
            for name in ("phi", "psi", "sentinel"):
                queries[kind][name].append(getattr(keys, name))
    LOG.info("keys of %d records in %.0f s", len(records), time.perf_counter() - start)
    return {
        "archive": archive,
        "records": len(records),
        "edit_phi": torch.cat(edit_phi),
        "edit_psi": torch.cat(edit_psi),
        "queries": {kind: {name: torch.cat(v) for name, v in q.items()} for kind, q in queries.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["keys", "bytes", "recall", "speed"])
    parser.add_argument("--archive", help="trained LiveEdit archive (default: the toy YAML's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"load_average": os.getloadavg(), "threads": args.threads}
    if args.command == "keys":
        keys = extract_keys(args.archive)
        torch.save(keys, OUT / "keys.pt")
        result.update({"archive": keys["archive"], "records": keys["records"], "written": str(OUT / "keys.pt")})
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
