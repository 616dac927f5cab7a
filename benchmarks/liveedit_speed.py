"""Speed and memory of LiveEdit on the toy world's backbone: edit latency, inference overhead, bytes per expert.

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/liveedit_speed.py [--archive PATH] [--experts 1000 100000] [--repeats 30]

Measures, at batch 1 and batch 8 on the default toy world (the scenes world):
- edit latency: `LiveEdit.add_edits` (the backbone up to layer l_e + the expert generator) against one full
  forward pass of the unedited backbone on the same sample;
- inference: a forward pass with N experts in the library against the unedited forward pass. The library is
  filled with the experts of real edits (eval records, one partial forward each); beyond the number of eval
  records the real experts are repeated with small noise on keys and factors, which exercises routing over N
  experts (what scales with N) while the number of experts that pass the hard filter stays realistic;
- bytes per expert (`ExpertLibrary.bytes_per_expert`);
- with N experts, the parts LiveEdit adds to a forward, each timed alone: the input-side keys, routing against the
  library, applying the selected experts.
Median wall-clock time of `--repeats` runs after warm-up, the two sides of each ratio run in turn; torch uses one
thread (as the toy world does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import torch

import easyedit_liveedit  # noqa: F401  (registers LiveEdit, applies the EasyEdit shims)
from easyedit_liveedit import LiveEdit, LiveEditMultimodalHparams, toyworld
from easyedit_liveedit.easyedit.archive import CONFIG_KEY
from easyedit_liveedit.liveedit.networks import Experts


def median_seconds(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall-clock seconds of each of ``fns``, run in turn within every repeat.

    Interleaved so that the two sides of a ratio see the same machine load: timed in separate blocks, the same
    ratio moved by up to 0.4 between runs on this 2-core machine.
    """
    for fn in fns:
        for _ in range(3):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, runs in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
    return [statistics.median(runs) for runs in times]


def eval_samples(world: toyworld.ToyWorld, hparams: LiveEditMultimodalHparams, n: int, offset: int = 0) -> list[dict]:
    """EasyEdit-format edit samples (src + alt, image) for eval records ``offset..offset+n``."""
    from easyeditor.evaluate import prepare_multimodal_edit

    from easyedit_liveedit.toyworld.evaluate import ImageLoader

    records = json.loads(world.split("vqa_eval").read_text())[offset : offset + n]
    load = ImageLoader(world.layout.images, world.config.image_size)
    tok = world.tokenizer()
    return [prepare_multimodal_edit(hparams, tok, r["alt"], r["src"], load(r["image"])) for r in records]


def batch_of(samples: list[dict]) -> dict:
    return {
        "image": torch.cat([s["image"] for s in samples]),
        "text_input": [t for s in samples for t in s["text_input"]],
        "prompts_len": [n for s in samples for n in s["prompts_len"]],
        "labels": [""] * len(samples),
    }


def fill_library(editor: LiveEdit, real: list[dict], n: int, seed: int = 0) -> None:
    """``n`` experts: those of the real edits, then noisy copies of them."""
    editor.reset()
    made = [editor.make_experts(s) for s in real]
    base = Experts(*(torch.cat([getattr(e, f) for e in made]) for f in ("psi", "phi", "U", "V")))
    editor.library.add(base)
    g = torch.Generator().manual_seed(seed)
    while len(editor.library) < n:
        take = min(len(base), n - len(editor.library))
        noisy = Experts(*(t[:take] + 0.05 * t[:take].std() * torch.randn(t[:take].shape, generator=g)
                          for t in (base.psi, base.phi, base.U, base.V)))  # fmt: skip
        editor.library.add(noisy)


def parts_ms(editor: LiveEdit, batch: dict, repeats: int) -> dict[str, float]:
    """What LiveEdit adds to a forward, timed alone: input keys, routing against the library, applying experts."""
    h, layout = editor.hidden_states(batch)
    keys = editor.net.input_keys(h, layout.image, layout.prompt)
    routing = editor.library.route(keys)
    parts = {
        "input_keys": lambda: editor.net.input_keys(h, layout.image, layout.prompt),
        "route": lambda: editor.library.route(keys),
        "apply": lambda: editor.library.apply(h, routing, editor.net.expert_norm),
    }
    return {
        name: round(1e3 * t, 3) for name, t in zip(parts, median_seconds(list(parts.values()), repeats), strict=True)
    }


def split_option(parser: argparse.ArgumentParser, default: str, help: str) -> None:
    """``--split``, the records a probe scores: an eval split is refused with the reason, before any work (only the
    final scoring reads the eval split; probes, ablations and choices of settings read the dev split)."""

    def checked(name: str) -> str:
        try:
            return toyworld.probe_split(name)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser.add_argument("--split", type=checked, default=default, help=help)


def probe_arguments(doc: str, edits: int, argv: list[str] | None = None) -> argparse.Namespace:
    """``--archive``, ``--edits`` and ``--split`` of the LiveEdit probes; also puts torch on one thread, as the toy
    world runs."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--archive", help="trained LiveEdit archive (default: the toy YAML's)")
    parser.add_argument("--edits", type=int, default=edits)
    split_option(parser, "vqa_dev", "the records edited: the first --edits of this split (eval is refused)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    return args


def load_editor(archive: str | None = None) -> tuple[toyworld.ToyWorld, LiveEditMultimodalHparams, LiveEdit, str]:
    """The default toy world (the one the toy YAMLs name), the toy editing YAML, and a ``LiveEdit`` with ``archive``
    (default: the YAML's), built with the config the archive was trained with where it records one (so an archive of
    other widths or flags loads)."""
    world = toyworld.load(progress=False)
    hparams = world.apply_paths(LiveEditMultimodalHparams.from_hparams("hparams/LiveEdit/toy-blip2.yaml"))
    archive = archive or hparams.archive
    state = torch.load(archive, map_location="cpu", weights_only=True)
    for name, value in state.get(CONFIG_KEY, {}).items():
        setattr(hparams, name, value)
    editor = LiveEdit(world.load_model(), hparams)
    editor.load_state_dict(state["model"])
    return world, hparams, editor.eval(), archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", help="trained LiveEdit archive (default: the toy YAML's)")
    parser.add_argument("--experts", type=int, nargs="+", default=[1000, 100000])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--real-edits", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)

    world, hparams, editor, archive = load_editor(args.archive)
    model = editor.model

    results: dict[str, object] = {"archive": archive}
    with torch.no_grad():
        for batch_size in (1, 8):
            batch = batch_of(eval_samples(world, hparams, batch_size, offset=1500))
            editor.reset()
            forward, edit = median_seconds(
                [lambda b=batch: model(b), lambda b=batch: editor.make_experts(b)], args.repeats
            )
            results[f"batch{batch_size}"] = {"forward_ms": 1e3 * forward, "edit_ms": 1e3 * edit,
                                             "edit_over_forward": edit / forward}  # fmt: skip
        real = eval_samples(world, hparams, args.real_edits)
        for n in args.experts:
            fill_library(editor, real, n)
            for batch_size in (1, 8):
                batch = batch_of(eval_samples(world, hparams, batch_size, offset=1500))
                forward, routed = median_seconds([lambda b=batch: model(b), lambda b=batch: editor(b)], args.repeats)
                fired = sum(len(row) for row in editor.routing_report(batch)) / batch_size
                results[f"experts{n}_batch{batch_size}"] = {
                    "forward_ms": 1e3 * forward, "edited_ms": 1e3 * routed, "overhead": routed / forward,
                    "experts_fired_per_input": fired, "parts_ms": parts_ms(editor, batch, args.repeats),
                }  # fmt: skip
        results["bytes_per_expert"] = editor.library.bytes_per_expert()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
