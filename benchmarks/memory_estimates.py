"""Memory and time ESTIMATES for LiveEdit on BLIP-2-OPT-2.7B, MiniGPT-4-7B and LLaVA-1.5-7B (no 7B model was run).

Usage (from the project root, after `make setup`):
    .venv/bin/python benchmarks/memory_estimates.py [--markdown]

What is computed and from what:
- backbone parameters: the public configurations of the checkpoints EasyEdit's YAMLs name (OPT-2.7B, Vicuna-7B /
  LLaMA-7B, EVA ViT-g, BERT-base Q-Former, CLIP ViT-L/14-336), counted with the standard transformer formulas;
- LiveEdit's trainable parameters: counted exactly, by building ``LiveEditNetwork`` with the paper's sizes on the
  meta device (no memory); meta-training memory for them: fp32 weights + gradients + Adam's two moments (16 bytes
  per parameter);
- bytes per expert and the library at 10^3 and 10^5 edits: by storing one expert of the backbone's shapes in the
  real ``ExpertLibrary`` (``bytes_per_expert``);
- activation memory of one meta-training step: only the layers above the edit layer l_e keep activations for the
  backward pass (the backbone is frozen, LiveEdit reads layer l_e's output), plus the logits. The bytes a decoder
  layer saves per token and hidden unit are MEASURED here, on tiny LLaMA decoders (transformers' LLaMA inside a
  tiny LLaVA, fp32, this machine's PyTorch attention kernel), by counting the tensors autograd saves in one real
  meta-training step at several depths above l_e; that constant, rescaled from fp32 to the backbone's fp16, is
  extrapolated to each backbone's width, depth and tokens;
- time: forward FLOPs = 2 x parameters x tokens per forward pass (language model and vision tower), a meta-training
  step = one truncated edit pass + four forwards with gradient + the backward through the layers above l_e (2x their
  forward); seconds at an ASSUMED sustained 100 TFLOP/s (about a third of an A100's dense bf16 peak). An edit is
  one forward pass up to layer l_e.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import easyedit_liveedit  # noqa: F401  (registers LiveEdit, applies the EasyEdit shims)
from easyedit_liveedit.liveedit import LiveEditConfig
from easyedit_liveedit.liveedit.library import ExpertLibrary
from easyedit_liveedit.liveedit.networks import Experts, LiveEditNetwork

ASSUMED_FLOPS = 100e12  # sustained FLOP/s assumed for the time estimates (see the module docstring)
BATCH = 8  # records per meta-training step (the paper's batch size)
# forwards per step (liveedit/train_step.py): with gradient, the three in-scope ones (edit_inner, edit_outer,
# edit_outer_image) and the locality one (loc_image, with experts); without, the truncated edit capture and the
# unedited locality reference
GRAD_FORWARDS = 4
TEXT_TOKENS = 24  # prompt + answer tokens of an E-VQA record (template included), rounded up


@dataclass(frozen=True)
class Backbone:
    """The facts the estimates need about one backbone (public configurations)."""

    name: str
    hidden: int  # language model width d
    layers: int  # decoder layers
    ffn: int  # MLP width
    vocab: int
    gated_mlp: bool  # LLaMA's SwiGLU (3 matrices) vs OPT's (2)
    tied_embeddings: bool  # OPT's LM head is its token embedding; LLaMA's is not
    vision_params: float  # vision tower + connector (Q-Former / projector), parameters
    image_tokens: int  # tokens the image adds to the language model's input
    extra_tokens: int  # template tokens around the image (MiniGPT-4's "###Human: <Img>...", LLaVA's "USER: ")
    sentinel_tokens: int  # num_sentinel_tokens in hparams/LiveEdit/<model>.yaml
    heads: int  # attention heads of the language model
    eager_attention: bool  # EasyEdit's own OPT/LLaMA copies (attention probabilities saved); transformers' LLaVA: SDPA
    vision_fp32: bool  # EasyEdit builds the EVA ViT with vit_precision="fp32" (and the Q-Former in fp32)

    @property
    def weight_bytes(self) -> float:
        """The backbone's weights as loaded: language model fp16 (EasyEdit; the plugin's LLaVA on CUDA), vision."""
        return 2 * self.lm_params + (4 if self.vision_fp32 else 2) * self.vision_params

    @property
    def lm_params(self) -> float:
        d = self.hidden
        per_layer = 4 * d * d + (3 if self.gated_mlp else 2) * d * self.ffn
        return self.layers * per_layer + (1 if self.tied_embeddings else 2) * self.vocab * d  # embeddings, LM head

    @property
    def tokens(self) -> int:
        return self.image_tokens + self.extra_tokens + TEXT_TOKENS


EVA_VIT_G = 1.0e9  # EVA-CLIP ViT-g/14 as BLIP-2 uses it (39 of 40 blocks): about 1.0B parameters
QFORMER = 0.107e9  # BERT-base Q-Former with cross-attention every other layer, 32 queries: about 107M
VICUNA_7B = dict(hidden=4096, layers=32, ffn=11008, vocab=32000, gated_mlp=True, tied_embeddings=False, heads=32)
BACKBONES = (
    Backbone(name="BLIP-2-OPT-2.7B", hidden=2560, layers=32, ffn=10240, vocab=50272, gated_mlp=False,
             tied_embeddings=True, heads=32, vision_params=EVA_VIT_G + QFORMER + 768 * 2560, image_tokens=32,
             extra_tokens=0, sentinel_tokens=32, eager_attention=True, vision_fp32=True),
    Backbone(name="MiniGPT-4-7B (Vicuna-7B)", **VICUNA_7B, vision_params=EVA_VIT_G + QFORMER + 768 * 4096,
             image_tokens=32, extra_tokens=12, sentinel_tokens=32, eager_attention=True, vision_fp32=True),
    # CLIP ViT-L/14 at 336 px (0.30B) + the 2-layer MLP projector (1024x4096 + 4096x4096); transformers' LLaMA (SDPA)
    Backbone(name="LLaVA-1.5-7B (Vicuna-7B v1.5)", **VICUNA_7B, vision_params=0.304e9 + 21e6, image_tokens=576,
             extra_tokens=6, sentinel_tokens=576, eager_attention=False, vision_fp32=False),
)  # fmt: skip


def liveedit_parameters(backbone: Backbone) -> int:
    """Exact count of LiveEdit's trainable parameters for the backbone's width, at the paper's sizes."""
    config = LiveEditConfig(num_sentinel_tokens=backbone.sentinel_tokens)
    with torch.device("meta"):
        net = LiveEditNetwork(backbone.hidden, config)
    return sum(p.numel() for p in net.parameters())


def bytes_per_expert(backbone: Backbone) -> int:
    """What the real ``ExpertLibrary`` stores per expert for this backbone (keys, factors, id)."""
    config = LiveEditConfig()
    k, dm, r, d = config.num_key_slots, config.cross_attn_dim, config.rank, backbone.hidden
    library = ExpertLibrary()
    library.add(Experts(psi=torch.zeros(1, k, dm), phi=torch.zeros(1, k, dm), U=torch.zeros(1, r, d),
                        V=torch.zeros(1, r, d)))  # fmt: skip
    return library.bytes_per_expert()


def saved_bytes(loss: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass of ``loss()``; then runs that backward."""
    seen: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        total = loss()
    total.backward()
    return sum(seen.values())


def measured_decoder_bytes(folder: Path) -> tuple[float, list[tuple]]:
    """Bytes a LLaMA decoder layer above l_e saves for the backward pass, per token and hidden unit (fp32).

    Measured on tiny LLaVA models (LLaMA's MLP ratio 11008/4096) in real meta-training steps: for each of two widths,
    two decoders that differ only in depth; the per-layer difference still holds the attention's width-independent
    part (its scores, whatever this PyTorch's kernel saves), which the difference between the two widths removes.
    Returns the constant and the measurements ``(width, layers above l_e, tokens with gradient, bytes saved)``.
    """
    from transformers import LlavaForConditionalGeneration

    from easyedit_liveedit import LiveEdit, LiveEditMultimodalTrainingHparams
    from easyedit_liveedit.backbones.llava import LlavaForEditing
    from easyedit_liveedit.bench.tiny_backbones import llama_tokenizer, llava_folder, mmedit_batch
    from easyedit_liveedit.easyedit.distributed import MetaStep

    image_size = 56  # 16 image tokens
    base_folder = llava_folder(folder / "base", image_size=image_size)
    tok = llama_tokenizer(base_folder, extra_tokens=["<image>", "<pad>"])
    tok.pad_token = "<pad>"
    base = LlavaForConditionalGeneration.from_pretrained(str(base_folder)).config
    rows, per_layer = [], {}
    for width in (32, 64):
        saved = {}
        for layers in (3, 6):  # edit layer 1: 1 and 4 layers above it
            config = base.to_dict()
            config["text_config"].update(
                hidden_size=width,
                intermediate_size=round(width * 11008 / 4096),
                num_hidden_layers=layers,
                num_attention_heads=4,
                num_key_value_heads=4,
            )
            torch.manual_seed(0)
            model = LlavaForEditing(LlavaForConditionalGeneration(type(base).from_dict(config)).eval(), tok)
            hparams = LiveEditMultimodalTrainingHparams.from_dict(dict(
                alg="LiveEdit", name="unset", model_name="llava", model_class="LlavaForConditionalGeneration",
                tokenizer_class="LlamaTokenizer", tokenizer_name="unset", device="cpu", edit_layer=1,
                cross_attn_dim=32, num_heads=4, num_sentinel_tokens=16,
            ))  # fmt: skip
            batch = mmedit_batch(hparams, tok, BATCH, image_size)
            grad_batches = ("edit_inner", "edit_outer", "edit_outer_image", "loc_image")
            tokens = sum(model.inputs(batch[name])[1].numel() for name in grad_batches)
            step = MetaStep(LiveEdit(model, hparams))
            saved[layers] = saved_bytes(lambda step=step, batch=batch: step(batch)[0])
            rows.append((width, layers - 2, tokens, saved[layers]))
        per_layer[width] = (saved[6] - saved[3]) / 3
    return (per_layer[64] - per_layer[32]) / (tokens * (64 - 32)), rows


def networks_step(net: LiveEditNetwork, h: torch.Tensor, image: torch.Tensor, prompt: torch.Tensor,
                  answer: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """What LiveEdit's networks compute with gradient in one meta-training step of one record (a scalar of it)."""
    experts = net.make_experts(h, image, prompt, answer)
    total = experts.U.sum() + experts.psi.sum() + experts.phi.sum()
    for _ in range(GRAD_FORWARDS):  # each input's keys and its mixed experts
        keys = net.input_keys(h, image, prompt)
        out = net.apply_experts(h, experts.U, experts.V, torch.ones(1, 1))
        total = total + out.sum() + keys.psi.sum() + keys.phi.sum() + keys.sentinel.sum()
    return total


def measured_liveedit_bytes() -> tuple[float, float]:
    """Bytes LiveEdit's own networks save per token in one meta-training step of one record, as ``a * d + b * d_m``.

    Measured on the networks alone (random hidden states of ``T`` tokens): one edit (``make_experts``) and
    ``GRAD_FORWARDS`` inputs (their keys and the mixed experts), at two widths ``d`` and two ``d_m``.
    """
    tokens = 64
    image = torch.arange(tokens)[None] < 16  # (1, T): 16 image tokens, 32 prompt tokens, 16 answer tokens
    answer = torch.arange(tokens)[None] >= 48
    prompt = ~image & ~answer
    saved = {}
    for d, dm in ((64, 32), (128, 32), (64, 64)):
        net = LiveEditNetwork(d, LiveEditConfig(cross_attn_dim=dm, num_heads=4, num_sentinel_tokens=4))
        h = torch.randn(1, tokens, d)
        saved[d, dm] = saved_bytes(lambda net=net, h=h: networks_step(net, h, image, prompt, answer)) / tokens
    per_d = (saved[128, 32] - saved[64, 32]) / 64
    per_dm = (saved[64, 64] - saved[64, 32]) / 32
    return per_d, per_dm


def estimates(layer_bytes_fp32: float, liveedit_bytes: tuple[float, float]) -> list[dict]:
    """One row of estimates per backbone."""
    config = LiveEditConfig()
    rows = []
    for b in BACKBONES:
        params = liveedit_parameters(b)
        above = b.layers - config.edit_layer - 1  # layers whose activations the backward needs
        tokens_with_grad = GRAD_FORWARDS * BATCH * b.tokens
        activations = layer_bytes_fp32 / 2 * tokens_with_grad * above * b.hidden  # fp16 backbone: half of fp32
        if b.eager_attention:  # EasyEdit's own OPT / LLaMA copies keep the softmax output (fp32) and its fp16 copy
            activations += GRAD_FORWARDS * BATCH * above * b.heads * b.tokens**2 * (4 + 2)
        logits = tokens_with_grad * b.vocab * (2 + 4)  # fp16 logits and their fp32 copy for the loss
        per_d, per_dm = liveedit_bytes
        networks = BATCH * b.tokens * (per_d * b.hidden + per_dm * config.cross_attn_dim)  # fp32, LiveEdit's own
        forward = 2 * (b.lm_params + b.vision_params) * b.tokens  # FLOPs of one forward of one record
        # the truncated capture, the unedited reference, the forwards with gradient and their backward above l_e
        step = BATCH * (forward * (config.edit_layer + 1) / b.layers + forward + GRAD_FORWARDS * forward
                        + GRAD_FORWARDS * 2 * forward * above / b.layers)  # fmt: skip
        edit = forward * (config.edit_layer + 1) / b.layers
        per_expert = bytes_per_expert(b)
        rows.append(dict(
            backbone=b.name, backbone_params=b.lm_params + b.vision_params,
            backbone_bytes=b.weight_bytes,
            tokens=b.tokens, liveedit_params=params, liveedit_training=16 * params, activations=activations + logits,
            liveedit_activations=networks,
            step_flops=step, step_seconds=step / ASSUMED_FLOPS, edit_flops=edit, edit_seconds=edit / ASSUMED_FLOPS,
            bytes_per_expert=per_expert, library_1e3=1e3 * per_expert, library_1e5=1e5 * per_expert,
        ))  # fmt: skip
    return rows


def human(n: float, unit: str = "B") -> str:
    for scale, prefix in ((2**30, "Gi"), (2**20, "Mi"), (2**10, "Ki")):
        if n >= scale:
            return f"{n / scale:.1f} {prefix}{unit}"
    return f"{n:.0f} {unit}"


def markdown(rows: list[dict]) -> str:
    lines = ["| | " + " | ".join(r["backbone"] for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    fields = (
        ("backbone parameters (weights as loaded: LM fp16, EasyEdit's ViT fp32)",
         lambda r: f"{r['backbone_params'] / 1e9:.2f}B ({human(r['backbone_bytes'])})"),
        ("tokens per record (image + template + text)", lambda r: str(r["tokens"])),
        ("LiveEdit trainable parameters", lambda r: f"{r['liveedit_params'] / 1e6:.1f}M"),
        ("their weights + grads + Adam (fp32)", lambda r: human(r["liveedit_training"])),
        ("backbone activations kept for backward, one step of 8", lambda r: human(r["activations"])),
        ("LiveEdit's own activations, one step of 8", lambda r: human(r["liveedit_activations"])),
        ("meta-training step: FLOPs / seconds at 100 TFLOP/s",
         lambda r: f"{r['step_flops']:.2e} / {r['step_seconds']:.2f} s"),
        ("one edit: FLOPs / seconds at 100 TFLOP/s",
         lambda r: f"{r['edit_flops']:.2e} / {1e3 * r['edit_seconds']:.1f} ms"),
        ("bytes per expert (fp32)", lambda r: f"{r['bytes_per_expert']:,}"),
        ("library after 10^3 edits", lambda r: human(r["library_1e3"])),
        ("library after 10^5 edits", lambda r: human(r["library_1e5"])),
    )  # fmt: skip
    for label, value in fields:
        lines.append(f"| {label} | " + " | ".join(value(r) for r in rows) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="benchmarks/memory_estimates.py", description=__doc__.split("\n")[0]).parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        constant, measured = measured_decoder_bytes(Path(scratch))
    per_d, per_dm = measured_liveedit_bytes()
    print("Measured on tiny LLaMA decoders (width, layers above l_e, tokens with gradient, bytes saved by autograd):")
    for row in measured:
        print(f"  {row}")
    print(f"=> {constant:.1f} bytes per token, layer above l_e and hidden unit (fp32), {constant / 2:.1f} in fp16")
    print(f"LiveEdit's networks, one record per step: {per_d:.1f} bytes per token and hidden unit + {per_dm:.1f} per "
          "token and d_m unit (fp32)\n")  # fmt: skip
    print("ESTIMATES (not measured on these models):\n")
    print(markdown(estimates(constant, (per_d, per_dm))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
