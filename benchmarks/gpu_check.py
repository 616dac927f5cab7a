"""GPU acceptance check: every path a researcher with a GPU takes, in one script, one line per stage with its time.

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/gpu_check.py                       # on one CUDA device (cuda:0), meant for < 5 min
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny   # the dry run of the same stages CI runs on a CPU

Stages (``--tiny`` shrinks every count so that the CPU dry run takes about a minute):
1. toy world: build (first time) or load the small toy world and run its EasyEdit BLIP-2 on the device;
2. meta-train LiveEdit on it with EasyEdit's trainer loop (300 steps; --tiny 10), fp16 autocast with loss scaling;
3. 100 sequential edits (--tiny 5) through the plugin's ``MultimodalEditor.edit_dataset``;
4. the comparison, LiveEdit beside EasyEdit's MEND (1, 10 and 100 edits; --tiny 1 and 2);
5. the NaN guard in fp16: EasyEdit's MEND edit after edit, LiveEdit on the same sequence;
6. a tiny real-architecture BLIP-2-OPT (EasyEdit's Blip2OPT, glue from a LAVIS-format checkpoint) and
7. a tiny LLaVA-1.5 (transformers' LlavaForConditionalGeneration, 576 image tokens; --tiny 16), each cast to bf16:
   meta-training steps under bf16 autocast, edits, routed forward and generation, all finite;
8. the expert library on the device with the faiss pre-filter: 20,000 experts (--tiny 2,048) saved, loaded onto the
   device, routed through the pre-filter (every list probed: the same experts as the exact scan) and applied, with
   every tensor of the library on the device.

Exit status: 0 when every stage passed, 1 when one failed (each failure is printed with its error), 2 when the
device asked for is not there. Files go to --out (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

LOG = logging.getLogger("gpu_check")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda, i.e. cuda:0)")
    p.add_argument("--tiny", action="store_true", help="the dry run: a few steps and edits per stage")
    p.add_argument("--out", default=None, help="keep every file here (default: a temporary folder)")
    p.add_argument("--cache", default=None, help="toy world cache (default: EASYEDIT_LIVEEDIT_CACHE or .cache)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    return p.parse_args(argv)


class Stages:
    """Runs stages in order, each timed, printing one line per stage; a failure is recorded and the next runs."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def run(self, name: str, stage: Callable[[], str]) -> None:
        start = time.perf_counter()
        try:
            detail, status = stage(), "ok"
        except Exception as error:  # noqa: BLE001  (every stage's failure is reported; the others still run)
            LOG.error("%s failed:\n%s", name, traceback.format_exc())
            detail, status = f"{type(error).__name__}: {error}".splitlines()[0][:200], "FAILED"
            self.failed.append(name)
        print(f"{name:<34} {status:<6} {time.perf_counter() - start:7.1f} s  {detail}", flush=True)


def finite(output: Any) -> bool:
    logits = output if isinstance(output, torch.Tensor) else output.logits
    return bool(torch.isfinite(logits.float()).all())


def bf16_liveedit(model: torch.nn.Module, hparams: Any, tok: Any, image_size: int, device: torch.device) -> str:
    """LiveEdit on ``model`` cast to bf16 on ``device``: 3 meta-training steps under bf16 autocast, 2 edits, a routed
    forward and generation; raises if anything is non-finite or nothing was learned or stored."""
    from easyedit_liveedit import LiveEdit
    from easyedit_liveedit.backbones import adapter_for
    from easyedit_liveedit.bench.tiny_backbones import mmedit_batch
    from easyedit_liveedit.easyedit.distributed import MetaStep
    from easyedit_liveedit.easyedit.placement import autocast, input_device, to_device

    model.to(device).eval()
    # the language model in bf16, as EasyEdit puts it in fp16 (LAVIS keeps BLIP-2's vision LayerNorm in fp32)
    adapter_for(model).language_model(model).to(torch.bfloat16)
    editor = LiveEdit(model, hparams)
    step = MetaStep(editor)
    optimizer = torch.optim.Adam(editor.net.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in editor.net.parameters()]
    batch = to_device(mmedit_batch(hparams, tok, 4, image_size), input_device(model))
    for _ in range(3):
        with autocast(device, "bf16"):
            total, _, _ = step(batch)
        if not math.isfinite(total.item()):
            raise FloatingPointError(f"meta-training loss {float(total)}")
        total.backward()
        optimizer.step()
        optimizer.zero_grad()
    if all(torch.equal(a, b) for a, b in zip(before, editor.net.parameters(), strict=True)):
        raise RuntimeError("meta-training changed no LiveEdit weight")
    editor.eval()
    # EasyEdit's Blip2OPT feeds its language model fp32 image tokens and relies on autocast (its own maybe_autocast
    # on CUDA is fp16 autocast around the OPT forward, which then wins over this bf16 one)
    with torch.no_grad(), autocast(device, "bf16"):
        editor.add_edits(batch["edit_inner"])
        out = editor(batch["edit_outer"])
        answers = editor.generate({"image": batch["edit_inner"]["image"],
                                   "text_input": batch["edit_inner"]["text_input"][:1]}, max_new_tokens=3)  # fmt: skip
    if not finite(out):
        raise FloatingPointError("non-finite logits after edits")
    dtype = next(editor.adapter.decoder_layers(model).parameters()).dtype
    return f"{len(editor.library)} experts, decoder {dtype}, generated {answers[0]!r}, loss {total.item():.3f}"


def library_on_device(device: torch.device, folder: Path, n: int, threads: int) -> str:
    """The expert library on ``device``: ``n`` experts added, saved to ``folder``, loaded onto the device, routed
    through the faiss pre-filter (every list probed, so it must keep exactly what the exact scan keeps) and applied;
    raises if the routings differ, a tensor of the library is elsewhere, or the output is not finite."""
    from easyedit_liveedit.index import FaissPrefilter
    from easyedit_liveedit.liveedit import ExpertLibrary, Experts, InputKeys

    g = torch.Generator().manual_seed(0)
    k, d_m, d, centres = 4, 32, 64, 64
    middle = 3 * torch.randn(centres, k, d_m, generator=g)  # keys cluster as edits about the same images do
    phi = middle[torch.randint(0, centres, (n,), generator=g)] + torch.randn(n, k, d_m, generator=g)
    experts = Experts(phi, phi.clone(), torch.randn(n, 2, d, generator=g), torch.randn(n, 2, d, generator=g))
    query = (middle[:8] + 0.5 * torch.randn(8, k, d_m, generator=g)).to(device)
    keys = InputKeys(query, query, 0.7 * query, torch.ones(8, dtype=torch.bool, device=device))
    made = ExpertLibrary(device=device)
    made.add(experts)  # made on the CPU, stored on the device
    exact = made.route(keys)
    made.save(folder)
    library = ExpertLibrary()
    library.load(folder, map_location=device)
    nlist = 16
    library.set_prefilter(FaissPrefilter(nlist=nlist, nprobe=nlist, train_size=64 * nlist, threads=threads), 1)
    routing = library.route(keys)
    if [[i for i, _ in row] for row in routing.report()] != [[i for i, _ in row] for row in exact.report()]:
        raise RuntimeError("the pre-filter's routing differs from the exact scan's with every list probed")
    elsewhere = [f"{name} on {t.device}" for name, value in vars(library).items()
                 for t in _tensors(value) if t.device != library.device]  # fmt: skip
    if library.device != device or elsewhere:
        raise RuntimeError(f"library on {library.device}, tensors elsewhere: {elsewhere}")
    h = torch.randn(8, 5, d, device=device)
    if not finite(library.apply(h, routing, torch.nn.LayerNorm(d).to(device))):
        raise FloatingPointError("non-finite output of the routed experts")
    return f"{n} experts on {device}, {routing.slots.numel()} fired through the pre-filter as through the exact scan"


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in ``value``, through dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return [t for item in items for t in _tensors(item)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (the CPU dry run is: benchmarks/gpu_check.py --device cpu --tiny)")
        return 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if args.cache:
        os.environ["EASYEDIT_LIVEEDIT_CACHE"] = args.cache
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        out.mkdir(parents=True, exist_ok=True)
        return run_stages(args, device, out)


def run_stages(args: argparse.Namespace, device: torch.device, out: Path) -> int:
    # imported here, after main() has set the offline switches huggingface_hub reads when it is imported
    start = time.perf_counter()
    from hydra import compose, initialize_config_module

    import easyedit_liveedit  # noqa: F401  (registers LiveEdit, applies the EasyEdit shims)
    from easyedit_liveedit import MultimodalEditor, toyworld
    from easyedit_liveedit.bench import tiny_backbones as tiny
    from easyedit_liveedit.bench.config import register_configs
    from easyedit_liveedit.bench.runner import Runner
    from easyedit_liveedit.easyedit import compat
    from easyedit_liveedit.easyedit.entry import editor_for
    from easyedit_liveedit.easyedit.models import build_backbone, build_llava
    from easyedit_liveedit.easyedit.placement import input_device, to_device
    from easyedit_liveedit.toyworld.easyedit_shims import vision_tower_builder
    from easyedit_liveedit.toyworld.vision import build_vision_tower

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    imported = time.perf_counter() - start
    print(f"gpu_check on {device} ({name}), torch {torch.__version__}, {'tiny' if args.tiny else 'full'} run; "
          f"imports {imported:.1f} s", flush=True)  # fmt: skip
    steps, edits = (6, 5) if args.tiny else (300, 100)
    # fp16 autocast with loss scaling on the GPU; the CPU dry run trains in fp32, smaller batches (CPU autocast is
    # slow; the tests cover the fp16 and bf16 training paths on the CPU)
    training = ["precision=fp16"] if device.type == "cuda" else ["precision=fp32", "batch_size=8", "val_steps=1"]
    compare_edits = [1, 2] if args.tiny else [1, 10, 100]
    index = device.index if device.type == "cuda" else 0  # EasyEdit's `device:` (cuda_to_cpu keeps 0 on a CPU)
    stages = Stages()
    state: dict[str, Any] = {}

    register_configs()
    with initialize_config_module("easyedit_liveedit.bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[
            "model.toy_world=small", f"run.output_dir={out}", f"run.archive_dir={out / 'archives'}",
            f"run.train_steps={steps}", "run.val_size=16", "run.workers=1", f"run.threads={args.threads}",
            "run.progress=false", f"run.edits={compare_edits}", "run.methods=[LiveEdit,MEND]", "run.probe_limit=10",
            "diagnose.precision=fp16", f"diagnose.edits={3 if args.tiny else 10}",
            f"+method.overrides.device={index}", f"+method.training_overrides.device={index}",
            *(f"+method.training_overrides.{item}" for item in training),
        ])  # fmt: skip

    def toy_world() -> str:
        world = toyworld.load("small", progress=False)
        runner = Runner(cfg, out / "runs")
        state.update(world=world, runner=runner)
        with world.easyedit_patches():
            model = world.load_model().to(device)
            hparams = runner.method_run(cfg.method).hparams
            from easyeditor import VQADataset

            data = VQADataset(str(world.split("vqa_eval")), size=4, config=hparams)
            batch = to_device(data.collate_fn([data[i] for i in range(4)])["edit_inner"], input_device(model))
            with torch.no_grad():
                output = model(batch)
        if not finite(output):
            raise FloatingPointError("non-finite logits from the toy backbone")
        return f"{world.layout.root}, backbone on {input_device(model)}"

    def meta_train() -> str:
        runner = state["runner"]
        state["archive"] = runner.train()
        return state["archive"]

    def sequential_edits() -> str:
        from easyeditor import VQADataset

        world, runner = state["world"], state["runner"]
        hparams = runner.method_run(cfg.method).hparams
        with world.easyedit_patches():
            editor = MultimodalEditor(hparams)
            data = VQADataset(str(world.split("vqa_eval")), size=edits, config=hparams)
            metrics, _, _ = editor.edit_dataset(data, sequential_edit=True, verbose=False)
        experts = len(editor_for(editor.model, hparams).library)
        if experts != edits:
            raise RuntimeError(f"{experts} experts after {edits} edits")
        rel = sum(m["post"]["rewrite_acc"] for m in metrics) / len(metrics)
        loc = sum(m["post"]["locality_acc"] for m in metrics) / len(metrics)
        return f"{edits} edits on {input_device(editor.model)}: reliability {rel:.3f}, T-locality {loc:.3f}"

    def comparison() -> str:
        runner = state["runner"]
        runner.compare()
        bad = [f"{r.method}@{r.edits}: {r.status}" for r in runner.rows if r.status != "ok"]
        if bad:
            raise RuntimeError("; ".join(bad))
        return ", ".join(f"{r.method}@{r.edits} rel {r.metrics.get('rewrite_acc', math.nan):.2f}" for r in runner.rows)

    def nan_guard() -> str:
        import json

        runner = state["runner"]
        with open(out / "nan_guard.txt", "w") as tables, contextlib.redirect_stdout(tables):  # its per-edit tables
            runner.diagnose()
        runs = json.loads((runner.out / "nan_guard.json").read_text())["runs"]
        found = {r["editor"]: r["failure"] for r in runs}
        if found.get("LiveEdit") is not None:
            raise FloatingPointError(f"LiveEdit went non-finite: {found['LiveEdit']}")
        return "; ".join(
            f"{name}: {'finite' if failure is None else 'non-finite at edit ' + str(failure['edit'] + 1)}"
            for name, failure in found.items()
        )

    def blip2_bf16() -> str:
        from easyedit_liveedit import LiveEditMultimodalTrainingHparams

        layout = tiny.blip2_files(out / "blip2-tiny")
        torch.manual_seed(1)
        checkpoint = tiny.write_lavis_checkpoint(tiny.build_blip2(layout), out / "blip2-tiny" / "lavis.pth")
        hparams = LiveEditMultimodalTrainingHparams.from_dict(dict(
            alg="LiveEdit", name=str(layout.opt), model_name="blip2", model_class="Blip2OPT",
            tokenizer_class="GPT2Tokenizer", tokenizer_name=str(layout.opt), qformer_name_or_path=str(layout.qformer),
            state_dict_file=str(layout.vision_weights), qformer_checkpoint=str(checkpoint), device=index,
            edit_layer=1, cross_attn_dim=32, num_heads=4, num_sentinel_tokens=32,
        ))  # fmt: skip
        with vision_tower_builder(build_vision_tower), compat.cuda_to_cpu():
            model = build_backbone(hparams)  # EasyEdit's get_model, glue from the LAVIS checkpoint
        return bf16_liveedit(model, hparams, model.opt_tokenizer, tiny.SMALL.image_size, device)

    def llava_bf16() -> str:
        from easyedit_liveedit import LiveEditMultimodalTrainingHparams

        image_size = 56 if args.tiny else 336  # 16 or 576 image tokens
        folder = tiny.llava_folder(out / "llava-tiny", image_size=image_size)
        hparams = LiveEditMultimodalTrainingHparams.from_dict(dict(
            alg="LiveEdit", name=str(folder), model_name="llava", model_class="LlavaForConditionalGeneration",
            tokenizer_class="LlamaTokenizer", tokenizer_name=str(folder), device=index, edit_layer=1,
            cross_attn_dim=32, num_heads=4, num_sentinel_tokens=(image_size // 14) ** 2,
        ))  # fmt: skip
        model = build_llava(hparams)
        return f"{model.num_image_tokens} image tokens; " + bf16_liveedit(model, hparams, model.tokenizer, image_size,
                                                                          device)  # fmt: skip

    stages.run("1 toy world on the device", toy_world)
    stages.run(f"2 meta-train LiveEdit ({steps} steps, {training[0]})", meta_train)
    stages.run(f"3 MultimodalEditor, {edits} edits", sequential_edits)
    stages.run("4 compare LiveEdit, MEND", comparison)
    stages.run("5 NaN guard, fp16", nan_guard)
    stages.run("6 BLIP-2-OPT tiny, bf16", blip2_bf16)
    stages.run("7 LLaVA-1.5 tiny, bf16", llava_bf16)
    stages.run("8 expert library, faiss pre-filter", lambda: library_on_device(device, out / "library",
                                                                               2048 if args.tiny else 20000,
                                                                               args.threads))  # fmt: skip
    total = time.perf_counter() - start
    print(f"gpu_check: {8 - len(stages.failed)}/8 stages passed in {total:.1f} s"
          + (f"; failed: {', '.join(stages.failed)}" if stages.failed else ""), flush=True)  # fmt: skip
    return 1 if stages.failed else 0


if __name__ == "__main__":
    sys.exit(main())
