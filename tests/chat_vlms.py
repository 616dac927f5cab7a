"""Tiny, randomly initialised LLaVA-OneVision and Qwen2-VL models with working processors, built offline.

Each is written to a folder whose name EasyEdit main recognises (``...llava-onevision...``, ``...qwen2-vl...``), with
what ``AutoProcessor.from_pretrained`` needs (a fast tokenizer with the family's special tokens and a chat template
of the real form, an image processor at 16-32 pixels), so EasyEdit main's own code loads them by path as it loads
the real ones. The vocabulary is a word-level one over a small corpus (the real ones are byte-level BPE).
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "what digit is shown here ? colour of the cat in this picture red blue seven nine two dog bird a an is it yes "
    "no which number written user assistant system You are helpful . , ! question short answer : plus one three"
).split()
FAMILY_FOLDERS = {"llava-onevision": "tiny-llava-onevision", "qwen2-vl": "tiny-qwen2-vl"}

# Chat templates of the real models' form (llava-hf/llava-onevision-qwen2-*-ov-hf, Qwen/Qwen2-VL-*-Instruct).
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are helpful .<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(specials: list[str], template: str):
    """A fast word-level tokenizer over ``WORDS`` with ``specials`` as special tokens and ``template``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(dict.fromkeys(["<unk>", *specials, "\n", *WORDS]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # words and punctuation apart; a newline is a token of its own (as in Qwen2's byte-level pre-tokenizer)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        padding_side="left",  # EasyEdit main puts the labels at the end of every row
    )
    tok.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in ("<|endoftext|>",)]})
    tok.chat_template = template
    return tok


def _qwen2_text(vocab_size: int, **extra) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **extra)  # fmt: skip


def build_llava_onevision(root: Path) -> Path:
    """A ``LlavaOnevisionForConditionalGeneration`` (SigLIP 16 px, patch 4, Qwen2 3 layers) and its processor."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    folder = root / FAMILY_FOLDERS["llava-onevision"]
    tok = _tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"], LLAVA_ONEVISION_TEMPLATE)
    vision = SiglipVisionConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4)  # fmt: skip
    config = LlavaOnevisionConfig(
        vision_config=vision.to_dict(),
        text_config=Qwen2Config(**_qwen2_text(len(tok))).to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[16, 16], [16, 32], [32, 16], [32, 32]],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    torch.manual_seed(0)
    LlavaOnevisionForConditionalGeneration(config).eval().save_pretrained(folder)
    images = LlavaOnevisionImageProcessor(size={"height": 16, "width": 16}, crop_size={"height": 16, "width": 16},
                                          image_grid_pinpoints=config.image_grid_pinpoints, do_pad=True)  # fmt: skip
    videos = LlavaOnevisionVideoProcessor(size={"height": 16, "width": 16})
    processor = LlavaOnevisionProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                                        chat_template=LLAVA_ONEVISION_TEMPLATE,
                                        num_image_tokens=(16 // 4) ** 2, vision_feature_select_strategy="full",
                                        vision_aspect_ratio="anyres_max_9")  # fmt: skip
    processor.save_pretrained(folder)
    return folder


def build_qwen2_vl(root: Path) -> Path:
    """A ``Qwen2VLForConditionalGeneration`` (vision depth 1, patch 4, merge 2; Qwen2 3 layers) and its processor."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    folder = root / FAMILY_FOLDERS["qwen2-vl"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]  # fmt: skip
    tok = _tokenizer(specials, QWEN2_VL_TEMPLATE)
    ids = {name: tok.convert_tokens_to_ids(name) for name in specials}
    config = Qwen2VLConfig(
        text_config=_qwen2_text(len(tok), rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(
            depth=1,
            embed_dim=16,
            hidden_size=32,
            num_heads=2,
            mlp_ratio=2,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),  # fmt: skip
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).eval().save_pretrained(folder)
    images = Qwen2VLImageProcessor(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, merge_size=2,
                                   temporal_patch_size=2)  # fmt: skip
    videos = Qwen2VLVideoProcessor(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=4, merge_size=2,
                                   temporal_patch_size=2)  # fmt: skip
    processor = Qwen2VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                                 chat_template=QWEN2_VL_TEMPLATE)  # fmt: skip
    processor.save_pretrained(folder)
    return folder


BUILDERS = {"llava-onevision": build_llava_onevision, "qwen2-vl": build_qwen2_vl}
