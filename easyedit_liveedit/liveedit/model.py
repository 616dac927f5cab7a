"""``LiveEditModel``: a frozen vision-language backbone, LiveEdit's networks and an expert library.

- An edit (``add_edits``) runs the edit sample teacher-forced up to layer ``l_e`` only (the decoder is cut
  there), turns those hidden states (with ``answer_embeddings``, also the answer tokens' input embeddings, seen by
  the language model's pre-hook in the same pass) into one expert per sample and stores it: one partial forward
  pass, no gradient step, and no backbone weight ever changes.
- Answering (``forward``, ``generate``) routes each input against the library at layer ``l_e`` and adds the
  chosen experts' residual there; generation routes once on the prompt and reuses it for every new token.
- Meta-training (``forward_with_experts``) mixes a given set of fresh experts with learned soft weights.

The networks sit on the edit layer's device (so a backbone sharded across devices works) and stay in fp32;
the library lives on the networks' device (and follows them on ``to``/``cuda``/``cpu``) and stores experts in the
backbone's floating compute dtype. Its checkpoint (``state_dict``) holds only the networks, never the backbone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .backbone import BackboneAdapter, TokenLayout
from .config import LiveEditConfig
from .layer import Capture, EditLayer, Mix, Route, truncated
from .library import ExpertLibrary
from .networks import Experts, LiveEditNetwork

LOG = logging.getLogger(__name__)


class LiveEditModel(nn.Module):
    """LiveEdit around a frozen vision-language backbone."""

    def __init__(
        self,
        model: nn.Module,
        config: LiveEditConfig,
        adapter: BackboneAdapter,
        library_dtype: torch.dtype | None = None,
    ) -> None:
        """Attach LiveEdit to ``model`` (its weights are frozen, never changed).

        Args:
            model: the backbone; it takes EasyEdit's multimodal sample dict.
            config: the method's hyper-parameters.
            adapter: what LiveEdit needs to know about ``model``'s family (``easyedit_liveedit.backbones``).
            library_dtype: storage dtype of the experts and keys, a floating one; default: the backbone's compute
                dtype at the edit layer (``compute_dtype``: a bf16/fp16 backbone halves the library's bytes; routing
                math stays fp32).

        Raises:
            ValueError: a non-floating ``library_dtype``, or an edit layer without a floating parameter to read the
                compute dtype from (then ``library_dtype`` must be given).
        """
        super().__init__()
        adapter.check_edit_layer(model, config.edit_layer)
        self.model = model
        self.config = config
        self.adapter = adapter
        model.requires_grad_(False)  # the backbone is never trained or edited
        layer = adapter.decoder_layers(model)[config.edit_layer]
        device = next(layer.parameters()).device  # the networks follow the edit layer (sharded backbones too)
        self.net = LiveEditNetwork(adapter.hidden_size(model), config).to(device)
        self.library = ExpertLibrary(dtype=library_dtype or compute_dtype(layer, config.edit_layer), device=device)
        self.edit_layer = EditLayer(model, adapter, config.edit_layer, self.net)

    def _apply(self, fn: Any, recurse: bool = True) -> LiveEditModel:
        """``nn.Module``'s ``to``/``cuda``/``cpu`` move the networks (and the backbone); the library follows the
        networks, so that routing never meets keys on another device."""
        super()._apply(fn, recurse)
        device = next(self.net.parameters()).device
        if self.library.device != device:
            self.library.to(device)
        return self

    # ----------------------------------------------------------------------------------- editing
    def hidden_states(self, samples: dict[str, Any]) -> tuple[Tensor, TokenLayout]:
        """Layer-``l_e`` hidden states ``(B, T, d)`` of ``samples`` and their layout; the layers above never run."""
        capture, layout = self._capture(samples, Capture())
        return capture.hidden, layout

    def _capture(self, samples: dict[str, Any], capture: Capture) -> tuple[Capture, TokenLayout]:
        """Run ``samples`` up to layer ``l_e`` with ``capture`` recording; the layers above never run."""
        layers = self.adapter.decoder_layers(self.model)
        with truncated(self.model, layers, self.config.edit_layer + 1), self.edit_layer.run(samples, capture) as p:
            self.model(samples)
        if capture.hidden is None:
            raise RuntimeError(f"LiveEdit: decoder layer {self.config.edit_layer} was not reached")
        return capture, p.layout

    def make_experts(self, samples: dict[str, Any]) -> Experts:
        """One expert per sample of ``samples`` (prompt + new target, teacher-forced); nothing is stored.

        Raises:
            ValueError: naming the sample, if one has no image tokens. LiveEdit routes by the image: a visual key
                read from nothing would be zero, and a zero key clears the hard filter of every input whose
                sentinel similarity is negative, so such an expert could fire on any image question.
        """
        with torch.no_grad():
            capture, layout = self._capture(samples, Capture(embeddings=self.config.answer_embeddings))
        missing = (~layout.image.any(dim=1)).nonzero().flatten().tolist()
        if missing:
            raise ValueError(
                f"LiveEdit edits are about an image, but sample(s) {missing} of this batch have none "
                "(image is None or no image token reached the language model); nothing was stored"
            )
        return self.net.make_experts(capture.hidden, layout.image, layout.prompt, layout.answer, capture.input_embeds)

    @torch.no_grad()
    def add_edits(self, samples: dict[str, Any], keys: list[str] | None = None) -> list[int]:
        """Edit: store one expert per sample in the library; returns their ids. Base weights never change.

        Args:
            keys: optional edit keys, one per sample: the library refuses a key it already holds (``has_key``), so
                a run resumed after a crash can skip what it committed.
        """
        return self.library.add(self.make_experts(samples), keys=keys)

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
        with self.edit_layer.run(samples, Route(self.library)):
            return self.model(samples)

    @torch.no_grad()
    def generate(self, samples: dict[str, Any], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers to ``samples`` (``image`` + prompts in ``text_input``), with the KV cache.

        Routing is computed once on the prompt and the chosen experts are applied to every generated
        token. Prompts are batched by token length, so padding never sits between prompt and answer.
        ``max_new_tokens=0`` answers every prompt with the empty string.
        """
        if max_new_tokens < 0:
            raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
        if max_new_tokens == 0:  # rows: prompts, or a processor's token ids (the families that generate themselves)
            return [""] * len(samples["text_input"] if "text_input" in samples else samples["input_ids"])
        own = self.adapter.generate(self.model, samples, max_new_tokens, self._routed)
        if own is not None:  # a family that generates itself (adapter.generate), within one routed pass
            return own
        prompts = list(samples["text_input"])
        tok = self.adapter.tokenizer(self.model)
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

    def _routed(self, samples: dict[str, Any]) -> contextlib.AbstractContextManager:
        """One inference pass over ``samples``: routed on the first call of layer ``l_e``, reused after."""
        return self.edit_layer.run(samples, Route(self.library))

    def _generate_group(self, samples: dict[str, Any], tok: Any, max_new_tokens: int) -> list[str]:
        language_model = self.adapter.language_model(self.model)
        embeds, mask = self.adapter.prompt_embeddings(self.model, samples)
        # The newline's last id: LLaMA's tokenizer encodes a lone "\n" as ["▁", "<0x0A>"].
        stop = {tok("\n", add_special_tokens=False).input_ids[-1], tok.eos_token_id}
        generated = []
        with self.edit_layer.run(samples, Route(self.library)):
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

    @torch.no_grad()
    def routing_report(self, samples: dict[str, Any]) -> list[list[tuple[int, float]]]:
        """Per input of ``samples``: the ``(expert_id, weight)`` pairs that fire, heaviest first.

        Runs the backbone only up to layer ``l_e``: routing needs nothing above it.
        """
        if len(self.library) == 0:
            return [[] for _ in samples["text_input"]]
        layers = self.adapter.decoder_layers(self.model)
        route = Route(self.library)
        with truncated(self.model, layers, self.config.edit_layer + 1), self.edit_layer.run(samples, route):
            self.model(samples)
        return route.routing.report()

    def forward_with_experts(self, samples: dict[str, Any], experts: Experts, switch: Tensor) -> tuple[Any, Mix]:
        """Meta-training forward: input ``b`` mixes the experts ``switch[b]`` allows, with the soft weights the
        config's ``soft_weights`` chooses (learned, as in the paper, or averaged for its ablation).

        Args:
            samples: EasyEdit batch dict of ``B`` inputs.
            experts: ``M`` fresh experts (with gradients).
            switch: ``(B, M)`` bool.

        Returns:
            The backbone's output, and the pass's ``Mix`` holding the inputs' input-side keys (``keys``) and their
            edit-side keys (``edit_keys``), for the routing losses.
        """
        mix = Mix(experts, switch)
        with self.edit_layer.run(samples, mix):
            output = self.model(samples)
        return output, mix

    # ----------------------------------------------------------------------------------- identity and state
    def identity(self) -> dict[str, Any]:
        """What an expert made by this editor depends on: the backbone's family and width, the fields of the config
        that shape an expert, and a fingerprint of the networks' weights. A saved library carries it."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.net.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return {
            "backbone": type(self.adapter).__name__,
            "hidden_size": self.net.hidden_size,
            **self.config.expert_shape(),
            "networks": digest.hexdigest()[:16],
        }

    def save_library(self, path: str | os.PathLike) -> None:
        """Write the library as a folder (safetensors shards and a manifest) with this editor's identity."""
        self.library.save(path, identity=self.identity())

    def load_library(self, path: str | os.PathLike, verify: bool = True) -> None:
        """Replace the library with the folder at ``path`` (memory-mapped on a CPU); refuses one made by a different
        editor, naming the field, and a truncated or altered shard, naming the file."""
        device = next(self.net.parameters()).device
        self.library.load(path, map_location=device, identity=self.identity(), verify=verify)

    def open_library(self, path: str | os.PathLike, shard_size: int = 4096, verify: bool = True) -> None:
        """Hold the library folder at ``path`` (created if missing): from now on every edit and removal is committed
        to it durably (fsync) before it returns; same identity check as ``load_library``."""
        device = next(self.net.parameters()).device
        self.library.open(path, self.identity(), shard_size=shard_size, verify=verify, map_location=device)

    def train(self, mode: bool = True) -> LiveEditModel:
        """Train or evaluate the LiveEdit networks; the frozen backbone always stays in eval mode (no dropout)."""
        self.training = mode
        self.net.train(mode)
        self.model.eval()
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """The LiveEdit networks' weights (the backbone is not part of a LiveEdit checkpoint)."""
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True) -> Any:
        return self.net.load_state_dict(state_dict, strict=strict)

    def detach_hooks(self) -> None:
        """Remove the hooks from the backbone (it then behaves exactly as before LiveEdit was built)."""
        self.edit_layer.remove()


def compute_dtype(layer: nn.Module, index: int) -> torch.dtype:
    """The backbone's floating compute dtype at decoder layer ``index``: that of the layer's first floating parameter.

    A quantized layer (bitsandbytes 8-bit or 4-bit) stores its linear weights as int8 / uint8, but computes and
    passes on hidden states in its floating dtype, which its norms and biases keep; experts stored in int8 would hold
    only whole numbers.

    Raises:
        ValueError: naming the layer, if it has no floating parameter.
    """
    for parameter in layer.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    raise ValueError(
        f"LiveEdit: decoder layer {index} has no floating parameter to read the backbone's compute dtype from; "
        "set the experts' storage dtype explicitly (LiveEditModel(..., library_dtype=torch.float16), the dtype the "
        "backbone computes in)"
    )
