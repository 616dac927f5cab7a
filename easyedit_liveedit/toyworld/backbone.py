"""The toy BLIP-2-OPT: EasyEdit's own ``Blip2OPT`` class, built by the same constructor call EasyEdit makes.

``easyeditor.trainer.models.get_model`` and ``MultimodalEditor.__init__`` build ``model_name: blip2`` as
``Blip2OPT(vit_model="eva_clip_g", img_size=364, use_grad_checkpoint=True, vit_precision="fp32",
freeze_vit=True, opt_model=name, state_dict_file=..., qformer_name_or_path=...)``. ``construct`` makes exactly
that call; ``easyedit_patches`` is the context in which EasyEdit's own calls produce the same toy model:
the ViT builder, the processor size and the checkpoint (``easyedit_shims.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator

import torch
from safetensors.torch import load_file, save_file

from ..easyedit.compat import cuda_to_cpu
from .config import WorldConfig
from .easyedit_shims import blip2_checkpoint, image_processor_size, skip_qformer_checkpoint, vision_tower_builder
from .layout import Layout
from .tokenizer import load_opt_tokenizer
from .vision import VisionConfig, build_vision_tower

LOG = logging.getLogger(__name__)


def write_fresh_backbone(config: WorldConfig, layout: Layout, vocab_size: int, qformer_vocab_size: int) -> None:
    """Write randomly initialised OPT and Q-Former folders and the ViT config (before pretraining).

    The tokenizer files must already be in ``layout.opt`` / ``layout.qformer``; this adds configs and weights.
    """
    from transformers import BertConfig, OPTConfig

    opt_module = importlib.import_module("easyeditor.trainer.blip2_models.modeling_opt")
    qformer_module = importlib.import_module("easyeditor.trainer.blip2_models.Qformer")
    torch.manual_seed(config.seed)
    opt_config = OPTConfig(
        vocab_size=vocab_size,
        hidden_size=config.opt_hidden,
        num_hidden_layers=config.opt_layers,
        ffn_dim=config.opt_ffn,
        num_attention_heads=config.opt_heads,
        max_position_embeddings=128,
        word_embed_proj_dim=config.opt_hidden,
        do_layer_norm_before=True,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        torch_dtype="float32",
        # EasyEdit's OPT copy does not declare its tied weights, so safetensors refuses to save a tied lm_head.
        tie_word_embeddings=False,
    )
    opt_class = opt_module.OPTForCausalLM  # EasyEdit's own copy, the class Blip2OPT loads
    opt_class(opt_config).save_pretrained(str(layout.opt), safe_serialization=True)

    bert_config = BertConfig(
        vocab_size=qformer_vocab_size,
        hidden_size=config.qformer_hidden,
        num_hidden_layers=config.qformer_layers,
        num_attention_heads=config.qformer_heads,
        intermediate_size=config.qformer_intermediate,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    # The same fields Blip2Base.init_Qformer sets, so the saved weights include the cross-attention blocks.
    bert_config.encoder_width = config.vit_width  # must equal the ViT's width, or the cross-attention shapes disagree
    bert_config.add_cross_attention = True
    bert_config.cross_attention_freq = 2
    bert_config.query_length = config.num_query_tokens
    # The BERT head shares tensors with the embeddings (bias and decoder), which `save_pretrained` refuses to write
    # as safetensors for EasyEdit's copied class; Blip2OPT discards that head anyway, so save untied copies.
    qformer = qformer_module.BertLMHeadModel(bert_config)
    bert_config.save_pretrained(str(layout.qformer))
    state = {k: v.detach().clone().contiguous() for k, v in qformer.state_dict().items()}
    save_file(state, str(layout.qformer / "model.safetensors"), metadata={"format": "pt"})

    VisionConfig(config.image_size, config.patch_size, config.vit_width, config.vit_layers, config.vit_heads).save(
        layout.vision
    )


def construct(layout: Layout, num_query_token: int) -> torch.nn.Module:
    """Build a fresh ``Blip2OPT`` with EasyEdit's own constructor call (before pretraining).

    EasyEdit's call leaves ``num_query_token`` at its default of 32; the toy backbone uses fewer, so this call
    passes it (under ``easyedit_patches`` the checkpoint supplies it to EasyEdit's own call). A fresh model has no
    checkpoint to load yet, so EasyEdit main's own load of ``qformer_checkpoint`` is skipped.
    """
    blip2_opt = importlib.import_module("easyeditor.trainer.blip2_models.blip2_opt")
    with vision_tower_builder(build_vision_tower), skip_qformer_checkpoint():
        model = blip2_opt.Blip2OPT(
            vit_model="eva_clip_g",
            img_size=364,
            use_grad_checkpoint=True,
            vit_precision="fp32",
            freeze_vit=True,
            num_query_token=num_query_token,
            opt_model=str(layout.opt),
            state_dict_file=str(layout.vision_weights),
            qformer_name_or_path=str(layout.qformer),
        )
    return model.float()  # the wheel loads OPT in fp16; the toy backbone trains and runs in fp32 on the CPU


def load_trained(layout: Layout, image_size: int, num_query_token: int) -> torch.nn.Module:
    """The trained backbone in ``layout``, built by EasyEdit's own ``Blip2OPT`` constructor call, in eval mode."""
    with easyedit_patches(layout, image_size):
        model = construct(layout, num_query_token)
    return model.eval()


def save_trained(model: torch.nn.Module, layout: Layout) -> None:
    """Write the trained weights: OPT folder, Q-Former folder, ViT file and the full checkpoint."""
    model.opt_model.save_pretrained(str(layout.opt), safe_serialization=True)
    # Blip2OPT drops the Q-Former's text parts (cls, word embeddings, text FFNs): keep their saved initial values.
    qformer_file = layout.qformer / "model.safetensors"
    merged = load_file(str(qformer_file))
    merged.update({k: v.contiguous() for k, v in model.Qformer.state_dict().items()})
    save_file(merged, str(qformer_file), metadata={"format": "pt"})
    save_file({k: v.contiguous() for k, v in model.visual_encoder.state_dict().items()}, str(layout.vision_weights))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(layout.checkpoint), metadata={"format": "pt"})


@contextlib.contextmanager
def easyedit_patches(layout: Layout, image_size: int) -> Iterator[None]:
    """The context in which EasyEdit's own constructors build the trained toy backbone and read its data.

    Inside it: ``Blip2OPT`` builds the ToyViT, EasyEdit's datasets and ``MultimodalEditor`` process images at
    ``image_size``, and every ``Blip2OPT`` loads ``blip2.safetensors`` with its number of query tokens
    (``easyedit_shims.py``); without CUDA, EasyEdit's hard-coded ``cuda:{device}`` and its YAMLs' ``device: 0``
    run on the CPU (``cuda_to_cpu``; a no-op when CUDA is available). Keep the context
    open for as long as EasyEdit code runs (datasets move batches to the device when they collate).
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(cuda_to_cpu())
        stack.enter_context(vision_tower_builder(build_vision_tower))
        stack.enter_context(image_processor_size(image_size))
        stack.enter_context(blip2_checkpoint(layout.checkpoint))
        yield


def load_tokenizer(layout: Layout):
    """The OPT-side tokenizer, loaded as EasyEdit's datasets load it."""
    return load_opt_tokenizer(layout.opt)
