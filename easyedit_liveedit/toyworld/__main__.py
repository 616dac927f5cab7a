"""``python -m easyedit_liveedit.toyworld [--config NAME] [--cache DIR] [--force] [--ship]``: build and summarise.

NAME is one of ``toyworld.CONFIGS``: ``scenes`` (the default) / ``scenes_small`` (the scenes world) or ``digits`` /
``small`` (the digits world). ``--ship`` then copies the world's backbone into ``artifacts/<NAME>/backbone/`` with
its ``MANIFEST.json`` (``artifacts.py``; what ``make artifacts`` runs), to be committed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; a hub lookup would only retry and time out


def main(argv: list[str] | None = None) -> int:
    """Build (or load) the toy world and print its sizes, pretraining time and per-kind pre-edit accuracy."""
    parser = argparse.ArgumentParser(prog="python -m easyedit_liveedit.toyworld", description=__doc__)
    parser.add_argument(
        "--config",
        default=None,
        help="scenes (the default world), digits (a stress configuration) or scenes_small, small (unit tests)",
    )
    parser.add_argument(
        "--cache", default=None, help="cache root (default: $EASYEDIT_LIVEEDIT_CACHE or .cache/toyworld)"
    )
    parser.add_argument(
        "--force", action="store_true", help="build from scratch even if a current build or a shipped backbone exists"
    )
    parser.add_argument("--ship", action="store_true", help="then ship the backbone to <artifacts>/NAME/backbone")
    parser.add_argument("--artifacts", default=None, help="shipped backbones' root (default: <project>/artifacts)")
    parser.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("world", "artifacts"):  # which way the world was made, and what was shipped
        logging.getLogger(f"easyedit_liveedit.toyworld.{name}").setLevel(logging.INFO)

    from . import DEFAULT_CONFIG, artifacts, build

    world = build(args.config or DEFAULT_CONFIG, cache=args.cache, force=args.force, artifacts_root=args.artifacts)
    if args.ship:
        command = " ".join(["python -m easyedit_liveedit.toyworld", *(sys.argv[1:] if argv is None else argv)])
        dest = artifacts.artifact_dir(world.config.name, args.artifacts)
        artifacts.ship(world, dest, command, world.manifest["build_seconds"])
        print(f"shipped the backbone of {world.config.name!r} to {dest} (commit it)", file=sys.stderr)
    manifest = world.manifest
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    sizes, pre = manifest["sizes"], manifest["pretraining"]
    print(f"toy world {world.config.name!r} at {world.layout.root}")
    if world.layout.installed_from.is_file():
        source = json.loads(world.layout.installed_from.read_text())
        print(f"  installed from the shipped backbone at {source['source']} (commit {source['git_commit']})")
    print(
        f"  edits: E-VQA {sizes['vqa_train']} train / {sizes['vqa_dev']} dev / {sizes['vqa_eval']} eval, "
        f"E-IC {sizes['caption_train']} / {sizes['caption_dev']} / {sizes['caption_eval']}, "
        f"classification {sizes['classification']}, "
        f"text facts {sizes['text_facts']}"
    )
    print(f"  backbone: {sizes['parameters']:,} parameters (EasyEdit Blip2OPT), OPT vocabulary {sizes['opt_vocab']}")
    print(f"  pretraining: {pre['steps']} steps in {pre['seconds']} s on {pre['threads']} threads")
    print("  pre-edit token accuracy (EasyEdit's metric, eval split):")
    for kind, parts in manifest["pre_edit_accuracy"].items():
        shown = ", ".join(f"{part} {value:.3f}" for part, value in parts.items() if part != "n")
        print(f"    {kind:<15} {shown}  (n={parts['n']})")
    if "retrieval" in manifest:
        found = manifest["retrieval"]
        print(f"  retrieval of each rephrase's own subject among {found['subjects']} eval subjects: "
              f"{found['opt_proj_flat']:.3f} ({found['metric']}, image tokens flattened)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
