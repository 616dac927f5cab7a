"""Tiny, randomly initialised models of the real architectures, written to local folders offline in seconds.

What the GPU acceptance script (``benchmarks/gpu_check.py``), its CPU dry run and the tests build real backbones
from, with the file layouts the real checkpoints have:

- BLIP-2-OPT: the files EasyEdit's ``Blip2OPT`` constructor reads (an OPT folder with its tokenizer, a Q-Former
  folder, a ViT file), at the small toy world's sizes, built by EasyEdit's own constructor call (its EVA ViT-g
  swapped for the toy ViT); ``write_lavis_checkpoint`` writes the glue as LAVIS's ``blip2_pretrained_opt*.pth``.
- MiniGPT-4's two glue checkpoints (``write_lavis_checkpoint``, ``write_minigpt4_checkpoint``).
- LLaVA-1.5: a ``LlavaForConditionalGeneration`` folder (CLIP ViT at 336 pixels, patch 14: 576 image tokens; a
  2-layer MLP projector; LLaMA) with a real ``LlamaTokenizer`` (sentencepiece, trained here), as llava-hf lays out.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..easyedit.checkpoints import GLUE
from ..toyworld.backbone import construct, write_fresh_backbone
from ..toyworld.digits.config import SMALL
from ..toyworld.easyedit_shims import vision_tower_builder
from ..toyworld.layout import Layout
from ..toyworld.tokenizer import train_opt_tokenizer, train_qformer_vocab
from ..toyworld.vision import build_vision_tower

CORPUS = [
    "what digit is shown here? seven",
    "is the digit even? yes no",
    "what is two plus five? seven zero one two three four five six eight nine",
    "USER: ASSISTANT: ###Human: <Img></Img> the quick brown fox jumps over the lazy dog 0123456789",
]


# ------------------------------------------------------------------------------------------------- BLIP-2-OPT
def blip2_files(root: str | Path, seed: int = 0, corpus: Iterable[str] = ()) -> Layout:
    """Write a tiny BLIP-2-OPT's files under ``root`` (the small toy world's sizes, random weights).

    Returns the layout: ``opt`` (``name`` / ``tokenizer_name``), ``qformer`` (``qformer_name_or_path``) and
    ``vision_weights`` (``state_dict_file``).
    """
    layout = Layout(Path(root))
    texts = [*CORPUS, *corpus]
    train_opt_tokenizer(texts, layout.opt, vocab_size=400)
    qformer_vocab = train_qformer_vocab(texts, layout.qformer, vocab_size=200)
    tok = importlib.import_module("transformers").GPT2Tokenizer.from_pretrained(str(layout.opt))
    torch.manual_seed(seed)
    write_fresh_backbone(SMALL, layout, len(tok), qformer_vocab)
    tower = construct(layout, 1).visual_encoder  # the toy ViT, as `state_dict_file` (EVA's weights for the real one)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(layout.vision_weights))
    return layout


def build_blip2(layout: Layout, num_query_token: int = 32) -> nn.Module:
    """EasyEdit's ``Blip2OPT`` from ``layout`` by EasyEdit's constructor call (toy ViT), in fp32; glue random."""
    return construct(layout, num_query_token)


def glue_state(model: nn.Module, key: str, model_name: str) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` that the checkpoint under hparams ``key`` holds for ``model_name`` (``GLUE``)."""
    (spec,) = [s for s in GLUE[model_name] if s.key == key]
    return {name: t.detach().clone() for name, t in model.state_dict().items() if spec.covers(name)}


def write_lavis_checkpoint(model: nn.Module, path: str | Path, model_name: str = "blip2", **extra: Any) -> Path:
    """``model``'s Q-Former glue as LAVIS saves it: ``{"model": state_dict}`` of what it trained (no ViT, no LLM).

    ``extra`` tensors are added to the state dict (a LAVIS file for another language model holds e.g. ``t5_proj``).
    """
    path = Path(path)
    state = glue_state(model, "qformer_checkpoint", model_name)
    torch.save({"model": {**state, **extra}, "epoch": 9}, path)
    return path


def write_minigpt4_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """``model``'s ``llama_proj`` as MiniGPT-4's ``pretrained_minigpt4*.pth``: ``{"model": {...}}``."""
    path = Path(path)
    torch.save({"model": glue_state(model, "pretrained_ckpt", "minigpt4")}, path)
    return path


# ------------------------------------------------------------------------------------------------- LLaMA + LLaVA
def llama_tokenizer(folder: str | Path, corpus: Iterable[str] = (), extra_tokens: Iterable[str] = ()) -> Any:
    """A real (slow, sentencepiece) ``LlamaTokenizer``, 400 pieces trained on ``CORPUS`` + ``corpus``, saved in
    ``folder``. Byte fallback and no normalisation, as LLaMA's: any text encodes, "\\n" is ["▁", "<0x0A>"]."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([*CORPUS, *corpus] * 20), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    tok = LlamaTokenizer(vocab_file=str(folder / "tokenizer.model"), legacy=True)
    if extra_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(extra_tokens)})
    tok.save_pretrained(str(folder))
    return LlamaTokenizer.from_pretrained(str(folder), legacy=True)


def llava_folder(
    folder: str | Path, seed: int = 0, image_size: int = 336, patch_size: int = 14, corpus: Iterable[str] = ()
) -> Path:
    """Write a tiny LLaVA-1.5 (``LlavaForConditionalGeneration``, random weights) and its tokenizer to ``folder``.

    At the default 336 pixels and patch 14 the vision tower makes LLaVA-1.5's 576 image tokens (CLS dropped).
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    folder = Path(folder)
    tok = llama_tokenizer(folder, corpus, extra_tokens=["<image>", "<pad>"])
    tok.pad_token = "<pad>"  # as llava-hf's tokenizer
    tok.save_pretrained(str(folder))
    num_image_tokens = (image_size // patch_size) ** 2
    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=32,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=num_image_tokens + 256, bos_token_id=1, eos_token_id=2,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=num_image_tokens, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def build_minigpt4(root: str | Path, layout: Layout, qformer_checkpoint: str | Path) -> nn.Module:
    """EasyEdit's ``MiniGPT4`` by ``MultimodalEditor``'s constructor call on a tiny LLaMA (toy ViT, 32 queries).

    The Q-Former folder and ViT come from a BLIP-2 ``layout`` (``blip2_files``); ``qformer_checkpoint`` is passed as
    EasyEdit passes it (the wheel's keyword ``q_former_model``).
    """
    from transformers import LlamaConfig

    root = Path(root)
    tok = llama_tokenizer(root / "vicuna")
    llama = importlib.import_module("easyeditor.trainer.blip2_models.modeling_llama")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    llama.LlamaForCausalLM(config).save_pretrained(str(root / "vicuna"), safe_serialization=True)
    mini_gpt4 = importlib.import_module("easyeditor.trainer.blip2_models.mini_gpt4")
    with vision_tower_builder(build_vision_tower):
        model = mini_gpt4.MiniGPT4(
            vit_model="eva_clip_g", q_former_model=str(qformer_checkpoint), img_size=364, use_grad_checkpoint=True,
            vit_precision="fp32", freeze_vit=True, llama_model=str(root / "vicuna"),
            state_dict_file=str(layout.vision_weights), qformer_name_or_path=str(layout.qformer),
        )  # fmt: skip
    return model.float().eval()  # MiniGPT4 loads LLaMA in fp16; the CPU runs fp32


# ------------------------------------------------------------------------------------------------- batches
def mmedit_batch(hparams: Any, tok: Any, batch_size: int, image_size: int, seed: int = 0) -> dict[str, Any]:
    """An MMEdit training batch (``edit_inner``, ``edit_outer``, ``edit_outer_image``, ``loc``, ``loc_image``) of
    random images and fixed questions, each sub-batch made by EasyEdit's ``prepare_multimodal_edit`` for
    ``hparams.model_name``: what a meta-training step reads, without a data set."""
    prepare = importlib.import_module("easyeditor.evaluate").prepare_multimodal_edit
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=g)
    others = torch.rand(batch_size, 3, image_size, image_size, generator=g)
    questions = [f"what digit is shown here? {i}" for i in range(batch_size)]
    answers = ["seven"] * batch_size  # EasyEdit tokenises a batch's answers into one tensor: equal lengths
    return {
        "edit_inner": prepare(hparams, tok, answers, questions, images),
        "edit_outer": prepare(hparams, tok, answers, [f"which digit is this? {i}" for i in range(batch_size)], images),
        "edit_outer_image": prepare(hparams, tok, answers, questions, images + 0.05 * others),
        "loc": prepare(hparams, tok, ["seven"] * batch_size, ["what is two plus five?"] * batch_size, None),
        "loc_image": prepare(hparams, tok, ["yes"] * batch_size, ["is the digit even?"] * batch_size, others),
    }
