"""The one place LiveEdit touches the backbone: hooks on decoder layer ``l_e`` that act only inside a pass.

``EditLayer`` registers two hooks and is otherwise inert: calling the backbone directly gives its unedited
answers. A *pass* (``EditLayer.run``) activates it for one backbone call with one of three typed modes:

- ``Capture``: record the layer-``l_e`` hidden states of an edit sample (the caller cuts the decoder after
  ``l_e`` with ``truncated``, so the layers above never run);
- ``Route``: inference; compute each input's keys on the prompt pass, route them against a library, and add the
  chosen experts' residual at every token; generated tokens reuse the prompt's routing;
- ``Mix``: meta-training; mix a given set of fresh experts with learned soft weights, differentiably.

Both weigh the experts as the networks' config says (``soft_weights``: learned, or averaged for the paper's ablation).

A mode is a small object with one method, ``at_layer(h, layout, net) -> new h or None``, so each path reads on
its own. A pass is not re-entrant (a second ``run`` inside one raises).

Under gradient checkpointing of the language model a checkpointed layer runs again during backward, its hooks
included, after the pass has ended. So a training pass (``Mix``) exempts layer ``l_e`` itself from checkpointing
(transformers' per-layer ``gradient_checkpointing`` flag): the residual is added once, in ordinary autograd, and
every other layer is checkpointed as configured; the gradients equal those without checkpointing. A backbone that
checkpoints its whole decoder at once (EasyEdit's own OPT and LLaMA copies, reentrant) runs layer ``l_e`` without
grad inside a training pass; ``Mix`` refuses that with an error instead of training nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .backbone import BackboneAdapter, TokenLayout
from .library import ExpertLibrary, Routing
from .networks import Experts, InputKeys, LiveEditNetwork, fp32
from .routing import similarity, soft_weights


@dataclass
class Capture:
    """Record the hidden states ``(B, T, d)`` at layer ``l_e``; the output is left as it is.

    With ``embeddings`` it also records the language model's input embeddings ``(B, T, d)`` of the same positions
    (``input_embeds``), for a generator that reads the answer tokens' embeddings.
    """

    embeddings: bool = False
    hidden: Tensor | None = None
    input_embeds: Tensor | None = None

    def at_layer(self, h: Tensor, layout: TokenLayout, net: LiveEditNetwork) -> Tensor | None:
        self.hidden = h
        return None


@dataclass
class Route:
    """Inference: route each input against ``library`` (hard visual filter, soft textual weights) and apply."""

    library: ExpertLibrary
    keys: InputKeys | None = None  # the inputs' keys, from the prompt pass
    routing: Routing | None = None  # computed on the prompt pass, reused for every generated token

    def at_layer(self, h: Tensor, layout: TokenLayout, net: LiveEditNetwork) -> Tensor | None:
        if len(self.library) == 0:
            return None
        if self.routing is None:
            self.keys = net.input_keys(h, layout.image, layout.prompt)
            self.routing = self.library.route(self.keys, net.config.soft_weights)
        return self.library.apply(h, self.routing, net.expert_norm)


@dataclass
class Mix:
    """Meta-training: input ``b`` mixes the experts ``switch[b]`` allows, with soft weights (``soft_weights``).

    Besides the inputs' own (input-side) keys it keeps their edit-side keys, read by the edit extractor from the
    same hidden states: the authors' routing losses pair an input with other samples of its scope seen as edits.
    """

    experts: Experts  # M fresh experts, with gradients
    switch: Tensor  # (B, M) bool
    keys: InputKeys | None = None  # the inputs' keys, for the routing losses
    edit_keys: tuple[Tensor, Tensor] | None = None  # (psi, phi) of the inputs read as edits, (B, k, d_m) each
    grad_enabled: bool = field(default_factory=torch.is_grad_enabled)  # as the pass began

    def at_layer(self, h: Tensor, layout: TokenLayout, net: LiveEditNetwork) -> Tensor | None:
        if self.grad_enabled and not torch.is_grad_enabled():
            raise RuntimeError(
                "LiveEdit: layer l_e runs without grad inside a training pass, as a decoder that checkpoints all its "
                "layers at once (reentrant) runs it, so no gradient would reach LiveEdit's networks; turn gradient "
                "checkpointing off for meta-training, or use a backbone that checkpoints layer by layer"
            )
        self.keys = net.input_keys(h, layout.image, layout.prompt)
        self.edit_keys = net.edit_keys(h, layout.image, layout.prompt)
        keep = self.switch & self.keys.has_image[:, None]  # text-only inputs take no expert, as at inference
        with fp32(h.device):
            text_sim = similarity(self.keys.psi, self.experts.psi)  # (B, M)
            weights = soft_weights(text_sim, keep, net.config.soft_weights)  # (B, M)
        return net.apply_experts(h, self.experts.U, self.experts.V, weights)


Mode = Capture | Route | Mix


@dataclass
class Pass:
    """One backbone call with the edit layer active: its inputs, its mode, and what the hooks saw."""

    samples: dict[str, Any]
    mode: Mode
    layout: TokenLayout | None = None  # image / prompt / answer positions, found on the first call of the layer
    attention_mask: Tensor | None = field(default=None, repr=False)


class EditLayer:
    """Hooks on the language model (to see the attention mask and, when captured, the input embeddings) and on
    decoder layer ``l_e``."""

    def __init__(self, model: nn.Module, adapter: BackboneAdapter, layer_index: int, net: LiveEditNetwork) -> None:
        self.model = model
        self.adapter = adapter
        self.layer_index = layer_index
        self.net = net
        self._pass: Pass | None = None
        layer = adapter.decoder_layers(model)[layer_index]
        self.layer = layer
        self._hooks = [
            adapter.language_model(model).register_forward_pre_hook(self._see_inputs, with_kwargs=True),
            layer.register_forward_hook(self._at_layer),
        ]

    @contextlib.contextmanager
    def run(self, samples: dict[str, Any], mode: Mode) -> Iterator[Pass]:
        """Activate the layer for the backbone calls inside the block (one pass; not re-entrant)."""
        if self._pass is not None:
            raise RuntimeError(
                f"LiveEdit: a {type(self._pass.mode).__name__} pass is already running on this backbone; "
                "passes do not nest (call the backbone itself inside one for an unedited answer)"
            )
        self._pass = Pass(samples, mode)
        checkpointed = getattr(self.layer, "gradient_checkpointing", False)
        if isinstance(mode, Mix) and checkpointed:
            self.layer.gradient_checkpointing = False  # the residual is added once, outside any recomputation
        try:
            yield self._pass
        finally:
            self._pass = None
            if checkpointed:
                self.layer.gradient_checkpointing = checkpointed

    def remove(self) -> None:
        """Detach the hooks: the backbone then behaves exactly as before LiveEdit was built."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _see_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        current = self._pass
        if current is None:
            return
        mask = kwargs.get("attention_mask")
        if mask is not None and (current.attention_mask is None or mask.shape[1] > current.attention_mask.shape[1]):
            current.attention_mask = mask  # the prompt's full mask; decode steps only grow it
        mode = current.mode
        if isinstance(mode, Capture) and mode.embeddings and mode.input_embeds is None:
            # the input embeddings, before any position embedding: given, or the token ids looked up
            embeds = kwargs.get("inputs_embeds")
            mode.input_embeds = module.get_input_embeddings()(kwargs["input_ids"]) if embeds is None else embeds

    def _at_layer(self, module: nn.Module, args: tuple, output: Any) -> Any:
        current = self._pass
        if current is None:
            return None
        h = output[0] if isinstance(output, tuple) else output  # (B, T, d)
        if current.layout is None:  # the first call of the pass: where are image / prompt / answer tokens
            current.layout = self.adapter.layout(self.model, current.samples, current.attention_mask).to(h.device)
        new_h = current.mode.at_layer(h, current.layout, self.net)
        if new_h is None:
            return None
        return (new_h, *output[1:]) if isinstance(output, tuple) else new_h


@contextlib.contextmanager
def truncated(model: nn.Module, layers: nn.ModuleList, keep: int) -> Iterator[None]:
    """Run ``model`` with only the first ``keep`` decoder layers: the capture pass skips everything above ``l_e``.

    The decoder's own loop then simply ends early (its final norm and head still run, a small fraction of a
    forward); the layer list is put back when the block ends.
    """
    owner_name, attribute = _owner_of(model, layers)
    owner = model.get_submodule(owner_name)
    setattr(owner, attribute, nn.ModuleList(list(layers)[:keep]))
    try:
        yield
    finally:
        setattr(owner, attribute, layers)


def _owner_of(model: nn.Module, child: nn.Module) -> tuple[str, str]:
    """``(owner's qualified name, attribute)`` under which ``child`` is registered in ``model``."""
    for name, module in model.named_modules():
        if module is child:
            owner, _, attribute = name.rpartition(".")
            return owner, attribute
    raise ValueError(f"{type(child).__name__} is not a submodule of {type(model).__name__}")
