"""``LiveEdit``: the frozen backbone, the LiveEdit networks and the expert library, joined by one hook.

A forward hook on decoder layer ``l_e`` is the only place where LiveEdit touches the backbone. What the
hook does depends on the call in progress:

- ``add_edits`` runs an edit sample teacher-forced only up to layer ``l_e`` (the rest of the model is
  skipped), turns the hidden states into one expert per sample and stores it: an edit is one partial
  forward pass, no gradient step, and the backbone's weights never change.
- ``forward`` (EasyEdit's inference call) computes each input's keys at layer ``l_e`` from its image and
  prompt tokens, routes it against the library (hard visual filter, soft textual weights) and adds the
  chosen experts' residual at every token. At generation, routing is computed once on the prompt and
  reused for every new token.
- ``forward_with_experts`` (meta-training) mixes a given set of fresh experts with learned soft weights,
  differentiably.

This class also fills EasyEdit's ``EditableModel`` contract (``__init__(model, config, model_constructor)``,
``edit``, ``edit_loss_fn``, ``outer_parameters``, ``state_dict``), so EasyEdit's trainer loop can hold it as
``ALG_TRAIN_DICT['LIVEEDIT']``. Its checkpoint holds only the LiveEdit networks, never the backbone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import TokenLayout, adapter_for
from .library import ExpertLibrary, Routing
from .modules import Experts, InputKeys, LiveEditNetwork
from .routing import similarity, soft_weights

LOG = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the hook to skip the layers above ``l_e`` when only its hidden states are needed."""


@dataclass
class _Call:
    """What the layer hook does during one backbone call, and what it leaves behind."""

    samples: dict[str, Any]
    mode: str  # "capture" | "route" | "route_only" | "mix"
    experts: Experts | None = None  # mix: the experts in play, (M, ...)
    switch: Tensor | None = None  # mix: (B, M) bool, experts each input may use
    hidden: Tensor | None = None  # capture: (B, T, d) at layer l_e
    layout: TokenLayout | None = None
    keys: InputKeys | None = None  # route / mix: the inputs' keys
    routing: Routing | None = None  # route: reused for every generated token
    attention_mask: Tensor | None = field(default=None, repr=False)


class LiveEdit(nn.Module):
    """LiveEdit around a frozen vision-language backbone."""

    def __init__(self, model: nn.Module, config: Any, model_constructor: Any = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.adapter = adapter_for(model)
        self.adapter.check_edit_layer(model, config.edit_layer)
        model.requires_grad_(False)  # the backbone is never trained or edited
        param = next(model.parameters())
        self.net = LiveEditNetwork(
            hidden_size=self.adapter.hidden_size(model),
            cross_attn_dim=config.cross_attn_dim,
            num_heads=config.num_heads,
            rank=config.rank,
            lora_scale=config.lora_scale,
            num_key_slots=config.num_key_slots,
            num_sentinel_tokens=config.num_sentinel_tokens,
            token_types=config.token_types,
        ).to(param.device)
        self.library = ExpertLibrary()
        self._call: _Call | None = None
        language_model = self.adapter.language_model(model)
        layer = self.adapter.decoder_layers(model)[config.edit_layer]
        self._hooks = [
            language_model.register_forward_pre_hook(self._see_attention_mask, with_kwargs=True),
            layer.register_forward_hook(self._at_edit_layer),
        ]

    # ----------------------------------------------------------------------------------- hooks
    def _see_attention_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        call = self._call
        if call is not None and kwargs.get("attention_mask") is not None:
            mask = kwargs["attention_mask"]
            if call.attention_mask is None or mask.shape[1] > call.attention_mask.shape[1]:
                call.attention_mask = mask  # the prompt's full mask; decode steps only grow it

    def _at_edit_layer(self, module: nn.Module, args: tuple, output: Any) -> Any:
        call = self._call
        if call is None:
            return None
        h = output[0] if isinstance(output, tuple) else output  # (B, T, d)
        if call.layout is None:  # first pass over the prompt: where are image / prompt / answer tokens
            call.layout = self.adapter.layout(self.model, call.samples, call.attention_mask).to(h.device)
        if call.mode == "capture":
            call.hidden = h
            raise _StopForward
        if call.mode == "mix":
            new_h = self._mix(call, h)
        elif len(self.library) == 0:
            return None
        else:
            routing = self._routing(call, h)
            if call.mode == "route_only":
                raise _StopForward
            new_h = self.library.apply(h, routing, self.net.expert_norm)
        return (new_h, *output[1:]) if isinstance(output, tuple) else new_h

    def _routing(self, call: _Call, h: Tensor) -> Routing:
        if call.routing is None:  # the prompt pass; generated tokens reuse this routing
            call.keys = self.net.input_keys(h, call.layout.image, call.layout.prompt)
            call.routing = self.library.route(call.keys)
        return call.routing

    def _mix(self, call: _Call, h: Tensor) -> Tensor:
        layout, experts = call.layout, call.experts
        call.keys = self.net.input_keys(h, layout.image, layout.prompt)
        keep = call.switch & call.keys.has_image[:, None]  # text-only inputs take no expert, as at inference
        weights = soft_weights(similarity(call.keys.psi, experts.psi), keep)  # (B, M)
        return self.net.apply_experts(h, experts.U, experts.V, weights)

    @contextlib.contextmanager
    def _calling(self, call: _Call) -> Iterator[_Call]:
        if self._call is not None:
            raise RuntimeError("LiveEdit: a backbone call is already in progress (no re-entrant calls)")
        self._call = call
        try:
            yield call
        finally:
            self._call = None

    # ----------------------------------------------------------------------------------- editing
    def hidden_states(self, samples: dict[str, Any]) -> tuple[Tensor, TokenLayout]:
        """Layer-``l_e`` hidden states ``(B, T, d)`` of ``samples`` and their layout; skips the layers above."""
        with self._calling(_Call(samples, "capture")) as call:
            try:
                self.model(samples)
            except _StopForward:
                pass
        if call.hidden is None:
            raise RuntimeError(f"LiveEdit: decoder layer {self.config.edit_layer} was not reached")
        return call.hidden, call.layout

    def make_experts(self, samples: dict[str, Any]) -> Experts:
        """One expert per sample of ``samples`` (prompt + new target, teacher-forced); nothing is stored."""
        with torch.no_grad():
            h, layout = self.hidden_states(samples)
        return self.net.make_experts(h, layout.image, layout.prompt, layout.answer)

    @torch.no_grad()
    def add_edits(self, samples: dict[str, Any]) -> list[int]:
        """Edit: store one expert per sample in the library; returns their ids. Base weights never change."""
        return self.library.add(self.make_experts(samples))

    def edit(
        self, batch: dict[str, Any], condition: Any = None, detach_history: bool = False
    ) -> tuple[nn.Module, dict]:
        """EasyEdit's ``EditableModel.edit``: adds the batch's experts to this editor and returns it.

        LiveEdit edits are appended to the library in place (that is lifelong editing); ``reset()`` or
        ``remove(expert_id)`` undoes them.
        """
        ids = self.add_edits(batch)
        return self, {"edit/experts": float(len(ids))}

    def remove(self, expert_id: int) -> None:
        """Forget one edit."""
        self.library.remove(expert_id)

    def reset(self) -> None:
        """Forget every edit: the editor answers exactly like the unedited backbone again."""
        self.library.reset()

    @contextlib.contextmanager
    def using_library(self, library: ExpertLibrary) -> Iterator[ExpertLibrary]:
        """Answer with ``library`` instead of the editor's own for the duration of the block."""
        own, self.library = self.library, library
        try:
            yield library
        finally:
            self.library = own

    # ----------------------------------------------------------------------------------- answering
    def forward(self, samples: dict[str, Any]) -> Any:
        """The backbone's output for ``samples`` with the routed experts applied (EasyEdit's inference call)."""
        with self._calling(_Call(samples, "route")):
            return self.model(samples)

    @torch.no_grad()
    def generate(self, samples: dict[str, Any], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers to ``samples`` (``image`` + prompts in ``text_input``), with the KV cache.

        Routing is computed once on the prompt and the chosen experts are applied to every generated
        token. Prompts are batched by token length, so padding never sits between prompt and answer.
        """
        tok = self.adapter.tokenizer(self.model)
        prompts = list(samples["text_input"])
        lengths = self.adapter.prompts_len(self.model, prompts)  # counted as the edit samples were
        answers: list[str] = [""] * len(prompts)
        for length in sorted(set(lengths)):
            rows = [i for i, n in enumerate(lengths) if n == length]
            image = samples.get("image")
            group = {
                "image": None if image is None else image[rows],
                "text_input": [prompts[i] for i in rows],
                "prompts_len": [length] * len(rows),
            }
            for i, answer in zip(rows, self._generate_group(group, tok, max_new_tokens), strict=True):
                answers[i] = answer
        return answers

    def _generate_group(self, samples: dict[str, Any], tok: Any, max_new_tokens: int) -> list[str]:
        language_model = self.adapter.language_model(self.model)
        embeds, mask = self.adapter.prompt_embeddings(self.model, samples)
        # The newline's last id: LLaMA's tokenizer encodes a lone "\n" as ["▁", "<0x0A>"].
        stop = {tok("\n", add_special_tokens=False).input_ids[-1], tok.eos_token_id}
        generated = []
        with self._calling(_Call(samples, "route")):
            out = language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=True, return_dict=True)
            for _ in range(max_new_tokens):
                next_ids = out.logits[:, -1].argmax(-1)  # (B,)
                generated.append(next_ids)
                if all(int(i) in stop for i in next_ids):
                    break
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                out = language_model(
                    input_ids=next_ids[:, None],
                    attention_mask=mask,
                    past_key_values=out.past_key_values,
                    use_cache=True,
                    return_dict=True,
                )
        answers = []
        for row in torch.stack(generated, dim=1).tolist():  # (B, steps)
            cut = next((j for j, t in enumerate(row) if t in stop), len(row))
            answers.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
        return answers

    def routing_report(self, samples: dict[str, Any]) -> list[list[tuple[int, float]]]:
        """Per input of ``samples``: the ``(expert_id, weight)`` pairs that fire, heaviest first.

        Runs the backbone only up to layer ``l_e``: routing needs nothing above it.
        """
        if len(self.library) == 0:
            return [[] for _ in samples["text_input"]]
        with torch.no_grad(), self._calling(_Call(samples, "route_only")) as call:
            try:
                self.model(samples)
            except _StopForward:
                pass
        return call.routing.report()

    def forward_with_experts(self, samples: dict[str, Any], experts: Experts, switch: Tensor) -> tuple[Any, InputKeys]:
        """Meta-training forward: input ``b`` mixes the experts ``switch[b]`` allows, with learned soft weights.

        Args:
            samples: EasyEdit batch dict of ``B`` inputs.
            experts: ``M`` fresh experts (with gradients).
            switch: ``(B, M)`` bool.

        Returns:
            The backbone's output and the inputs' keys (for the routing losses).
        """
        with self._calling(_Call(samples, "mix", experts=experts, switch=switch)) as call:
            output = self.model(samples)
        return output, call.keys

    # ----------------------------------------------------------------------------------- EasyEdit contract
    def train(self, mode: bool = True) -> LiveEdit:
        """Train or evaluate the LiveEdit networks; the frozen backbone always stays in eval mode (no dropout)."""
        self.training = mode
        self.net.train(mode)
        self.model.eval()
        return self

    def outer_parameters(self) -> Iterator[nn.Parameter]:
        """What meta-training updates: the LiveEdit networks only."""
        return self.net.parameters()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """The LiveEdit networks' weights (the backbone is not part of a LiveEdit checkpoint)."""
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True) -> Any:
        return self.net.load_state_dict(state_dict, strict=strict)

    def detach_hooks(self) -> None:
        """Remove the hooks from the backbone (it then behaves exactly as before LiveEdit was built)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
