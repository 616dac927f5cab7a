"""The vision-language glue of EasyEdit's BLIP-2 and MiniGPT-4: loaded from the hparams' checkpoints, or refused.

A BLIP-2-style model is three parts: a frozen vision tower, a frozen language model and the trained *glue* between
them: the learned query tokens, the Q-Former that reads the image through them, the LayerNorm on the vision features
(``ln_vision``) and the projection into the language model (``opt_proj`` / ``llama_proj``). EasyEdit's constructors
read the vision tower from ``state_dict_file`` and the language model from ``name``; the glue comes from checkpoints:

- BLIP-2-OPT: ``qformer_checkpoint``, a LAVIS checkpoint (``blip2_pretrained_opt2.7b.pth``, ``{"model": state_dict}``)
  holding ``query_tokens``, ``Qformer.*``, ``ln_vision.*`` and ``opt_proj.*``. LAVIS saves only the parameters it
  trained, so the file holds neither the vision tower nor OPT. The PyPI wheel's ``Blip2OPT`` never reads it.
- MiniGPT-4: ``qformer_checkpoint`` (LAVIS's ``blip2_pretrained_flant5xxl.pth``: ``query_tokens``, ``Qformer.*``,
  ``ln_vision.*``; its ``t5_proj`` is not used), which the wheel's ``MiniGPT4`` loads non-strictly (so a file with the
  wrong keys loads nothing, silently), and ``pretrained_ckpt`` (MiniGPT-4's ``{"model": {"llama_proj.weight",
  "llama_proj.bias"}}``), which the wheel never reads.

``load_glue`` runs after EasyEdit has built the model. For each checkpoint of the family it reads the file and checks
that it holds every glue parameter with the model's shape; if the model's weights already equal the checkpoint's (as
after EasyEdit main's own loading, or the toy world's full-checkpoint shim) it changes nothing; otherwise it copies
every tensor of the file that the model has, in the model's dtype and device. A missing key, file or tensor is an
error naming the hparams key: the model never runs with randomly initialised glue.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueCheckpoint:
    """One checkpoint a family's glue comes from: the hparams key naming the file and what the file must hold."""

    key: str  # the hparams key (EasyEdit's name) holding the checkpoint's path
    prefixes: tuple[str, ...]  # state-dict names of the glue: a parameter is glue if its name starts with one
    what: str  # the checkpoint, as its users know it

    def covers(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)


GLUE: dict[str, tuple[GlueCheckpoint, ...]] = {
    "blip2": (
        GlueCheckpoint(
            "qformer_checkpoint",
            ("query_tokens", "Qformer", "ln_vision", "opt_proj"),
            "LAVIS blip2_pretrained_opt*.pth",
        ),
    ),
    "minigpt4": (
        GlueCheckpoint("qformer_checkpoint", ("query_tokens", "Qformer", "ln_vision"), "LAVIS blip2_pretrained_*.pth"),
        GlueCheckpoint("pretrained_ckpt", ("llama_proj",), "MiniGPT-4's pretrained_minigpt4*.pth"),
    ),
}


@dataclass
class GlueReport:
    """What ``load_glue`` did, per hparams key."""

    loaded: dict[str, int] = field(default_factory=dict)  # key -> tensors copied into the model
    already: list[str] = field(default_factory=list)  # keys whose checkpoint the model already held
    ignored: dict[str, int] = field(default_factory=dict)  # key -> tensors of the file the model has no place for


def read_checkpoint(path: str | os.PathLike, key: str, source: str = "<hparams>") -> dict[str, Tensor]:
    """The flat state dict in ``path``: a LAVIS / MiniGPT-4 ``.pth`` (``{"model": state_dict}``) or a safetensors file.

    Raises:
        FileNotFoundError / ValueError: naming ``key`` and ``source`` when the file is missing or not in either format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: key {key!r} points to {str(path)!r}, which is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unreadable file gets the same named error)
        raise ValueError(f"{source}: key {key!r}: cannot read {path} as a torch checkpoint ({error})") from error
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{source}: key {key!r}: {path} is not a LAVIS-style checkpoint {{'model': state_dict}} (found {found})"
        )
    return state


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    return {**dict(model.named_buffers()), **dict(model.named_parameters())}


def load_glue(model: nn.Module, hparams: Any) -> GlueReport:
    """Make ``model``'s vision-language glue equal the checkpoints ``hparams`` name (see the module docstring).

    Args:
        model: an EasyEdit ``Blip2OPT`` or ``MiniGPT4`` as EasyEdit's constructor built it (any other family, and a
            ``model_name`` without glue checkpoints, is left alone).
        hparams: EasyEdit-style hparams with ``model_name`` and the checkpoint keys (``qformer_checkpoint``,
            ``pretrained_ckpt``).

    Returns:
        A ``GlueReport``. Invariant: on return every glue parameter equals the checkpoint's tensor (in the model's
        dtype), or an exception was raised and the model was not changed.

    Raises:
        ValueError / FileNotFoundError: naming the hparams key (and the file) when a checkpoint is not set, does not
            exist, cannot be read, lacks a glue parameter of the model or holds one of another shape.
    """
    report = GlueReport()
    source = getattr(hparams, "source", None) or f"<{type(hparams).__name__}>"
    tensors = _tensors(model)
    plans = []
    for spec in GLUE.get(getattr(hparams, "model_name", None), ()):
        glue = sorted(name for name, _ in model.named_parameters() if spec.covers(name))
        if not glue:
            continue  # not this family's model (a stand-in, or a family without this part)
        path = getattr(hparams, spec.key, None)
        if path is None:
            has = "is null" if hasattr(hparams, spec.key) else f"is missing ({type(hparams).__name__} has no such key)"
            raise ValueError(
                f"{source}: key {spec.key!r} {has}: without it the {len(glue)} glue parameters of "
                f"{type(model).__name__} ({', '.join(spec.prefixes)}) would stay randomly initialised; point it at "
                f"the {spec.what}"
            )
        state = read_checkpoint(path, spec.key, source)
        missing = [name for name in glue if name not in state]
        if missing:
            raise ValueError(
                f"{source}: key {spec.key!r}: {path} lacks {len(missing)} of the {len(glue)} glue parameters of "
                f"{type(model).__name__} (first: {', '.join(missing[:3])}); they would stay randomly initialised"
            )
        shared = [name for name in state if name in tensors]
        for name in shared:
            if tuple(state[name].shape) != tuple(tensors[name].shape):
                raise ValueError(
                    f"{source}: key {spec.key!r}: {path} holds {name} of shape {tuple(state[name].shape)}, the model "
                    f"has {tuple(tensors[name].shape)} (a checkpoint of another model size?)"
                )
        plans.append((spec, path, state, shared))
    # every file checked before any weight changes: an error leaves the model as EasyEdit built it
    for spec, path, state, shared in plans:
        report.ignored[spec.key] = len(state) - len(shared)
        if all(torch.equal(tensors[n], state[n].to(tensors[n].device, tensors[n].dtype)) for n in shared):
            report.already.append(spec.key)
            LOG.info("%s: the model already holds %s (%s): nothing to load", type(model).__name__, spec.key, path)
            continue
        with torch.no_grad():
            for name in shared:
                tensors[name].copy_(state[name])
        report.loaded[spec.key] = len(shared)
        LOG.info(
            "%s: loaded %d tensors from %s (%s; %d tensors of the file have no place in the model)",
            type(model).__name__, len(shared), spec.key, path, report.ignored[spec.key],
        )  # fmt: skip
    return report
