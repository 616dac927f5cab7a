"""The ``easyedit-liveedit`` command line (also ``python -m easyedit_liveedit``), a Hydra application.

Usage: ``easyedit-liveedit <command> [group=option ...] [key=value ...] [--multirun]``, for example::

    easyedit-liveedit compare run=quick
    easyedit-liveedit edit method=MEND data=toy_eic run.edits=[10]
    easyedit-liveedit edit --multirun method=LiveEdit,MEND run=quick

Commands: ``train`` (meta-train the method's archive with EasyEdit's trainer loop), ``edit`` (one method's
lifelong edit sequence, scored), ``compare`` (every method of ``run.methods`` on the same sequence),
``diagnose`` (the NaN guard: EasyEdit's MEND edit after edit, LiveEdit beside it), ``probe`` (the EMT
forgetting probe before and after the edits), ``methods`` (EasyEdit's editor tables, LiveEdit included).

Each run writes into its own Hydra run directory (``<run.output_dir>/<command>/<time>/``): the composed
configuration (``config.yaml`` and Hydra's ``.hydra/``), the log (``easyedit-liveedit.log``), and for
``edit``/``compare``/``probe`` the table (``table.md``, ``table.csv``) and the plot (``plot.png``); a ``compare``
with ``run.workers`` > 1 also gives each method a folder of its own, ``methods/<method>/`` (see ``runner.py``).
The command name is the first argument; it becomes the override ``command=<name>``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any

from .config import COMMANDS, register_configs
from .quiet import quiet

LOG = logging.getLogger(__name__)

USAGE = (
    "usage: easyedit-liveedit {" + ",".join((*COMMANDS, "methods")) + "} [group=option ...] [key=value ...] "
    "[--multirun]\n"
    "  groups: method=LiveEdit|MEND|SERAC|IKE  model=toy|toy_digits|blip2|minigpt4|llava  "
    "data=toy_evqa|toy_eic|mmedit  run=default|quick\n"
    "  e.g.   easyedit-liveedit compare run=quick   (or --quick)\n"
    "         easyedit-liveedit edit method=MEND data=toy_eic run.edits=[10]\n"
    "  --cfg job prints the composed configuration; --help shows Hydra's help."
)


def print_methods() -> None:
    """EasyEdit's editor tables after ``import easyedit_liveedit`` (LiveEdit beside the built-in editors)."""
    importlib.import_module("easyedit_liveedit")  # registers LiveEdit
    alg_dict = importlib.import_module("easyeditor.util.alg_dict")
    train_dict = importlib.import_module("easyeditor.util.alg_train_dict")
    print("EasyEdit multimodal editors (ALG_MULTIMODAL_DICT):")
    for name, fn in sorted(alg_dict.ALG_MULTIMODAL_DICT.items()):
        print(f"  {name:<12} {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}")
    print("EasyEdit trainable editors (ALG_TRAIN_DICT):")
    for name, cls in sorted(train_dict.ALG_TRAIN_DICT.items()):
        print(f"  {name:<12} {cls.__module__}.{cls.__qualname__}")


def _hydra_argv(argv: list[str]) -> list[str] | None:
    """Turn ``<command> overrides...`` into Hydra arguments; None when nothing is left for Hydra to do."""
    if not argv:
        print(USAGE)
        print()
        print_methods()
        return None
    argv = ["run=quick" if arg == "--quick" else arg for arg in argv]  # `--quick`: the name for run=quick
    head = argv[0]
    if head == "methods":
        print_methods()
        return None
    if head in COMMANDS:
        return _flags_first([*argv[1:], f"command={head}"])
    if head.startswith("-") or "=" in head:  # plain Hydra arguments (command=..., --help, --cfg job)
        return _flags_first(argv)
    raise SystemExit(f"easyedit-liveedit: unknown command {head!r}; expected one of {', '.join(COMMANDS)}, methods\n"
                     + USAGE)  # fmt: skip


# Hydra's flags that take a value (``--cfg job``); the others (``--multirun``, ``--help``) stand alone.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
                "-cd", "--experimental-rerun", "--info", "-i"}  # fmt: skip


def _flags_first(args: list[str]) -> list[str]:
    """Flags before overrides: Hydra's argparse rejects overrides split by a flag (``a=1 --multirun b=2``)."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            flags.append(arg)
            if arg in _VALUE_FLAGS and "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("-"):
                if arg not in ("--info", "-i") or "=" not in args[i + 1]:  # --info's value is optional
                    i += 1
                    flags.append(args[i])
        else:
            overrides.append(arg)
        i += 1
    return [*flags, *overrides]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``easyedit-liveedit`` and ``python -m easyedit_liveedit``."""
    args = _hydra_argv(list(sys.argv[1:] if argv is None else argv))
    if args is None:
        return 0
    import hydra

    register_configs()
    app = hydra.main(config_path="conf", config_name="config", version_base="1.3")(run_command)
    program = sys.argv[0]
    sys.argv = [program, *args]  # Hydra reads its arguments from sys.argv
    try:
        app()
    finally:
        sys.argv = [program, *(argv if argv is not None else args)]
    return 0


# ----------------------------------------------------------------------------------------- the Hydra task
def run_command(cfg: Any) -> None:
    """Hydra's task function: run ``cfg.command`` with the composed configuration."""
    from hydra.core.hydra_config import HydraConfig

    if cfg.command not in COMMANDS:
        raise ValueError(f"command={cfg.command!r}: expected one of {', '.join(COMMANDS)}")
    out = Path(HydraConfig.get().runtime.output_dir)
    quiet(cfg.run.verbose)
    from .runner import run  # heavy (torch, easyeditor): imported only once the configuration is valid

    _, result = run(cfg, out)
    if result:
        print(result)
    print(f"run directory: {out}")
