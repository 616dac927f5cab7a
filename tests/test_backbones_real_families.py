"""MiniGPT-4 (EasyEdit's ``MiniGPT4``) and LLaVA-1.5 (transformers' ``LlavaForConditionalGeneration``) under LiveEdit.

Both are tiny, randomly initialised models of the real architectures, built offline: a LLaMA tokenizer trained
here with sentencepiece (the real ``LlamaTokenizer`` class MiniGPT-4 loads), EasyEdit's own ``MiniGPT4``
constructor (its EVA ViT swapped for the toy ViT by compat section 4, as for the toy BLIP-2) and a
``LlavaForConditionalGeneration`` from a small config. Samples are made by EasyEdit's own
``prepare_multimodal_edit``, so ``prompts_len`` is counted as EasyEdit counts it for each ``model_name``.

On EasyEdit main (transformers 5) MiniGPT-4 is EasyEdit main's own class (no BOS, ``end_sym`` ""); LLaVA-1.5, which
EasyEdit main cannot build, is tested on the wheel's stack only (transformers 4.57).
"""

from __future__ import annotations

import importlib
import inspect
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TARGET
from torch import Tensor, nn

from easyedit_liveedit import LiveEdit, LiveEditMultimodalHparams
from easyedit_liveedit.backbones import LlavaForEditing, adapter_for
from easyedit_liveedit.backbones.minigpt4 import VQA_PROMPT
from easyedit_liveedit.liveedit.networks import Experts
from easyedit_liveedit.toyworld.easyedit_shims import vision_tower_builder
from easyedit_liveedit.toyworld.vision import VisionConfig, build_vision_tower

IMAGE_SIZE = 16
PROMPTS = ["what digit is shown here?", "what colour is the cat in this picture?"]
TARGETS = ["seven", "red"]
CORPUS = [
    "Question: what digit is shown here? Short answer: seven",
    "what colour is the cat in this picture? red dog blue bird",
    "###Human: <Img><ImageHere></Img> USER: ASSISTANT: the quick brown fox jumps over the lazy dog 0123456789",
]


# ----------------------------------------------------------------------------------- tiny backbones
def _llama_tokenizer(folder: Path, extra_tokens: list[str] = ()) -> Any:
    """A real (slow, sentencepiece) ``LlamaTokenizer`` with a 400-piece vocabulary trained on ``CORPUS``.

    Byte fallback and no normalisation, as LLaMA's: a lone "\\n" is ["▁", "<0x0A>"] as in Vicuna's tokenizer.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    # transformers 5's LlamaTokenizer ignores vocab_file; from_pretrained converts the folder's tokenizer.model
    tok = LlamaTokenizer.from_pretrained(str(folder), legacy=True)
    if extra_tokens:
        tok.add_special_tokens({"additional_special_tokens": list(extra_tokens)})
    tok.save_pretrained(str(folder))
    return LlamaTokenizer.from_pretrained(str(folder), use_fast=False, legacy=True)


def _llama_config(vocab_size: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )


def _build_minigpt4(root: Path) -> nn.Module:
    """EasyEdit's ``MiniGPT4`` by the constructor call ``MultimodalEditor`` / ``get_model`` make, from local files."""
    from safetensors.torch import save_file
    from transformers import BertConfig

    tok = _llama_tokenizer(root / "vicuna")
    llama = importlib.import_module("easyeditor.trainer.blip2_models.modeling_llama")
    llama.LlamaForCausalLM(_llama_config(len(tok))).save_pretrained(str(root / "vicuna"), safe_serialization=True)
    # Q-Former: a BERT vocabulary, config and weights of EasyEdit's copied BertLMHeadModel.
    qformer = root / "qformer"
    qformer.mkdir()
    (qformer / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    bert = BertConfig(vocab_size=7, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    bert.save_pretrained(str(qformer))
    bert.encoder_width, bert.add_cross_attention, bert.cross_attention_freq, bert.query_length = 16, True, 2, 4
    weights = importlib.import_module("easyeditor.trainer.blip2_models.Qformer").BertLMHeadModel(bert).state_dict()
    save_file({k: v.clone().contiguous() for k, v in weights.items()}, str(qformer / "model.safetensors"))
    VisionConfig(IMAGE_SIZE, 8, 16, 1, 2).save(root / "vit")  # the toy ViT, 16-wide (the Q-Former's encoder_width)
    torch.save({"model": {}}, root / "qformer_checkpoint.pth")  # the BLIP-2 checkpoint MiniGPT4 loads non-strictly
    mini_gpt4 = importlib.import_module("easyeditor.trainer.blip2_models.mini_gpt4")
    # EasyEdit main renamed the wheel's keyword q_former_model to qformer_checkpoint
    parameters = inspect.signature(mini_gpt4.MiniGPT4.__init__).parameters
    checkpoint_key = "qformer_checkpoint" if "qformer_checkpoint" in parameters else "q_former_model"
    with vision_tower_builder(build_vision_tower):
        model = mini_gpt4.MiniGPT4(
            vit_model="eva_clip_g",
            **{checkpoint_key: str(root / "qformer_checkpoint.pth")},
            img_size=364,
            use_grad_checkpoint=True,
            vit_precision="fp32",
            freeze_vit=True,
            num_query_token=4,  # EasyEdit's call leaves 32; 4 keeps the test small
            llama_model=str(root / "vicuna"),
            state_dict_file=str(root / "vit" / "model.safetensors"),
            qformer_name_or_path=str(qformer),
        )
    return model.float().eval()  # MiniGPT4 loads LLaMA in fp16; the CPU runs fp32


def _build_llava(root: Path) -> nn.Module:
    """A ``LlavaForConditionalGeneration`` (CLIP ViT, 2-layer MLP projector, LLaMA) wrapped for EasyEdit batches."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = _llama_tokenizer(root / "llava", extra_tokens=["<image>", "<pad>"])
    tok.pad_token = "<pad>"  # as llava-hf's tokenizer
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=32,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision,
        text_config=_llama_config(len(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // 4) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return LlavaForEditing(LlavaForConditionalGeneration(config).eval(), tok)


# ----------------------------------------------------------------------------------- what each test needs
@dataclass
class Family:
    """One backbone family, with the model-side facts the tests check the adapter against."""

    name: str  # EasyEdit's model_name
    model: nn.Module
    tok: Any
    num_image_tokens: int
    embed: nn.Module  # the LLaMA token embedding
    receiver: nn.Module  # the module that receives the final inputs_embeds (image features spliced in)
    end_sym: str  # what the forward appends to text_input

    def image_features(self, image: Tensor) -> Tensor:
        """``(B, N, d)``: the image tokens as the model computes them, outside the forward."""
        if self.name == "minigpt4":
            return self.model.encode_img(image)[0]
        return torch.stack(list(self.model.llava.model.get_image_features(pixel_values=image)))

    def hparams(self, **overrides: Any) -> LiveEditMultimodalHparams:
        values = dict(
            alg_name="LiveEdit", name="unset", model_name=self.name, model_class=type(self.model).__name__,
            tokenizer_class="LlamaTokenizer", tokenizer_name="unset", device="cpu", edit_layer=1,
            cross_attn_dim=32, num_heads=4, num_sentinel_tokens=self.num_image_tokens,
        )  # fmt: skip
        values.update(overrides)
        return LiveEditMultimodalHparams.from_dict(values)

    def samples(self, n: int = 2, seed: int = 0, image: bool = True) -> dict[str, Any]:
        """``n`` edit samples made by EasyEdit's own ``prepare_multimodal_edit`` for this ``model_name``."""
        from easyeditor.evaluate import prepare_multimodal_edit

        g = torch.Generator().manual_seed(seed)
        pixels = torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) if image else None
        hparams = self.hparams()
        return prepare_multimodal_edit(hparams, self.tok, (TARGETS * n)[:n], (PROMPTS * n)[:n], pixels)


# LLaVA-1.5 through LlavaForEditing is supported on the wheel's stack only (EasyEdit main has no LLaVA-1.5 path).
FAMILIES = ["minigpt4", "llava"] if TARGET == "wheel" else ["minigpt4"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory) -> Family:
    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    if request.param == "minigpt4":
        model = _build_minigpt4(root)
        return Family("minigpt4", model, model.llama_tokenizer, 4, model.llama_model.model.embed_tokens,
                      model.llama_model, model.end_sym)  # fmt: skip
    model = _build_llava(root)
    language_model = model.llava.model.language_model
    return Family("llava", model, model.tokenizer, 16, language_model.embed_tokens, language_model, "")


@pytest.fixture
def editor(family):
    editor = LiveEdit(family.model, family.hparams())
    yield editor
    editor.detach_hooks()  # the module-scoped model outlives this editor


def _capture_inputs(module: nn.Module) -> tuple[dict, Any]:
    """Record the ``inputs_embeds`` / ``attention_mask`` kwargs of the next call of ``module``."""
    seen: dict[str, Tensor] = {}

    def hook(_module, _args, kwargs):
        seen.update({k: kwargs[k] for k in ("inputs_embeds", "attention_mask") if kwargs.get(k) is not None})

    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


def _layout_of(editor: LiveEdit, samples: dict) -> Any:
    with torch.no_grad():
        return editor.hidden_states(samples)[1]


# ----------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("with_image", [True, False])
def test_layout_matches_the_positions_the_forward_really_uses(family, editor, with_image):
    samples = family.samples(2, image=with_image)
    seen, handle = _capture_inputs(family.receiver)
    try:
        with torch.no_grad():
            out = family.model(samples)
    finally:
        handle.remove()
    layout = _layout_of(editor, samples)
    embeds, real = seen["inputs_embeds"], seen["attention_mask"].bool()  # what the LLaMA decoder received
    assert layout.image.shape == layout.prompt.shape == layout.answer.shape == real.shape
    # answer: exactly where the forward itself puts its loss (its own labels, input-aligned)
    assert torch.equal(layout.answer, out.labels != -100)
    if with_image:
        # the whole batch, as the forward encodes it: a batch of one can round differently on some CPUs
        batch_features = family.image_features(samples["image"])  # (B, N, d)
    for b in range(2):
        # image: the positions holding the image features computed outside the forward
        if with_image:
            features = batch_features[b]  # (N, d)
            holds_feature = (embeds[b][:, None] == features[None]).all(-1).any(-1)  # (T,)
            assert torch.equal(layout.image[b], holds_feature)
            assert int(holds_feature.sum()) == family.num_image_tokens
            assert not layout.image[b, 0]  # never a plain prefix: a BOS and a template come first
        else:
            assert not layout.image[b].any()
        # prompt: the question's own token embeddings, in order; answer: the target's (+ end symbol)
        prompt_ids = family.tok(PROMPTS[b], add_special_tokens=False).input_ids
        text_ids = family.tok(samples["text_input"][b] + family.end_sym, add_special_tokens=False).input_ids
        assert torch.equal(embeds[b][layout.prompt[b]], family.embed(torch.tensor(prompt_ids)))
        assert torch.equal(embeds[b][layout.answer[b]], family.embed(torch.tensor(text_ids[len(prompt_ids) :])))
        # nothing on padding; the rest of the real tokens are the BOS and the template around the image
        assert not (layout.image[b] | layout.prompt[b] | layout.answer[b])[~real[b]].any()
        marked = (layout.image[b] | layout.prompt[b] | layout.answer[b]).sum()
        assert int(real[b].sum() - marked) == _untagged_tokens(family, with_image)
    assert real[0].sum() != real[1].sum()  # the two samples differ in length: padding was exercised


def _untagged_tokens(family: Family, with_image: bool) -> int:
    """Real tokens that are neither image, prompt nor answer: BOS (the wheel's MiniGPT-4, LLaVA) and template."""
    if family.name == "minigpt4":
        before, after = VQA_PROMPT.split("<ImageHere>")
        n = [len(family.tok(t, add_special_tokens=False).input_ids) for t in (before, after)]
        return int(TARGET == "wheel") + sum(n) if with_image else 0
    before, after = family.model.image_prompt.split("<image>")
    n = [len(family.tok(t, add_special_tokens=False).input_ids) for t in (before, after)]
    return 1 + sum(n) if with_image else 1


def test_minigpt4_forward_still_hard_codes_the_template_the_adapter_assumes():
    """The wheel's forward puts a BOS before the template; EasyEdit main's ``text_encoding`` does not."""
    mini_gpt4 = importlib.import_module("easyeditor.trainer.blip2_models.mini_gpt4")
    if TARGET == "wheel":
        source = inspect.getsource(mini_gpt4.MiniGPT4.forward)
        assert repr(VQA_PROMPT) in source and "bos_embeds, img_embeds, to_regress_embeds" in source
    else:
        source = inspect.getsource(mini_gpt4.MiniGPT4.text_encoding)
        assert repr(VQA_PROMPT) in source and "torch.cat([img_embeds, to_regress_embeds], dim=1)" in source


def test_prompt_embeddings_are_the_forwards_own_prefix(family, editor):
    samples = family.samples(2)
    samples = {**samples, "text_input": [PROMPTS[0]] * 2}  # equal-length prompts, no answer
    samples["prompts_len"] = editor.adapter.prompts_len(family.model, samples["text_input"])
    seen, handle = _capture_inputs(family.receiver)
    try:
        with torch.no_grad():
            family.model(samples)
    finally:
        handle.remove()
    with torch.no_grad():
        embeds, mask = editor.adapter.prompt_embeddings(family.model, samples)
    T = embeds.shape[1]  # the forward has the end symbol on top (MiniGPT-4's "\n")
    assert torch.equal(embeds, seen["inputs_embeds"][:, :T]) and torch.equal(mask, seen["attention_mask"][:, :T])


# ----------------------------------------------------------------------------------- LiveEdit on the family
def test_add_edits_makes_one_expert_and_leaves_every_base_weight_bit_identical(family, editor):
    before = {k: v.clone() for k, v in family.model.state_dict().items()}
    ids = editor.add_edits(family.samples(1))
    assert len(ids) == 1 and len(editor.library) == 1
    after = family.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("row, token_type", [(0, "image"), (1, "prompt"), (2, "answer")])
def test_token_types_reach_the_generator_through_the_familys_layout(family, row, token_type):
    """``token_types`` (ours) marks the family's image, prompt and answer tokens: each type's embedding shapes U, V."""
    editor = LiveEdit(family.model, family.hparams(token_types=True))
    try:
        samples = family.samples(2)
        before = editor.make_experts(samples)
        with torch.no_grad():
            editor.net.generator.types_u[row] += 1.0
            editor.net.generator.types_v[row] += 1.0
        after = editor.make_experts(samples)
    finally:
        editor.detach_hooks()
    for name in ("U", "V"):
        change = (getattr(after, name) - getattr(before, name)).abs().amax()
        assert change > 1e-4, f"the {token_type} type embedding left {name} unchanged"
    assert torch.equal(after.phi, before.phi) and torch.equal(after.psi, before.psi)  # keys do not see types


def test_answer_embeddings_are_the_answer_tokens_own_input_embeddings(family):
    """``answer_embeddings`` (ours): the generator reads, at the layout's answer positions, exactly the embeddings of
    the answer's tokens (the language model's input embeddings, before any position), and they shape ``U, V``. Seen
    failing with the embeddings taken from the image-and-prompt positions instead (shifted by one)."""
    from easyedit_liveedit.liveedit.layer import Capture

    editor = LiveEdit(family.model, family.hparams(answer_embeddings=True))
    try:
        samples = family.samples(2)
        with torch.no_grad():
            capture, layout = editor._capture(samples, Capture(embeddings=True))
            before = editor.make_experts(samples)
            editor.net.generator.answer_v.token_type += 1.0
            after = editor.make_experts(samples)
    finally:
        editor.detach_hooks()
    for b in range(2):
        prompt_ids = family.tok(PROMPTS[b], add_special_tokens=False).input_ids
        text_ids = family.tok(samples["text_input"][b] + family.end_sym, add_special_tokens=False).input_ids
        expected = family.embed(torch.tensor(text_ids[len(prompt_ids) :]))
        assert torch.equal(capture.input_embeds[b][layout.answer[b]], expected)
    assert (after.V - before.V).abs().amax() > 1e-4 and torch.equal(after.U, before.U)


def _add_strong_experts(editor: LiveEdit, samples: dict) -> list[int]:
    """Experts with the edit's real keys and random factors, so their residual is surely non-zero."""
    made = editor.make_experts(samples)
    g = torch.Generator().manual_seed(7)
    return editor.library.add(
        Experts(
            psi=made.psi,
            phi=made.phi,
            U=torch.randn(made.U.shape, generator=g),
            V=torch.randn(made.V.shape, generator=g),
        )
    )


@pytest.fixture
def only_first_input_routed(monkeypatch):
    """Routing seam: the hard filter keeps every expert for input 0 of a batch and none for the others."""
    import easyedit_liveedit.liveedit.library as library

    def first_row_only(visual_sim, sentinel_sim, has_image=None):
        keep = torch.zeros_like(visual_sim, dtype=torch.bool)
        keep[0] = True
        return keep if has_image is None else keep & has_image[:, None]

    monkeypatch.setattr(library, "hard_filter", first_row_only)


def test_edited_forward_differs_only_for_inputs_routed_to_an_expert(family, editor, only_first_input_routed):
    _add_strong_experts(editor, family.samples(2, seed=1))
    batch = family.samples(2, seed=2)
    with torch.no_grad():
        plain = family.model(batch).logits
        edited = editor(batch).logits
    routed, not_routed = editor.routing_report(batch)
    assert len(routed) == 2 and not_routed == []
    assert (edited[0] - plain[0]).abs().amax() > 1e-3
    assert torch.equal(edited[1], plain[1])
    # text-only inputs are never routed (no image tokens): bit-identical to the unedited backbone
    text_only = family.samples(2, seed=2, image=False)
    with torch.no_grad():
        assert torch.equal(editor(text_only).logits, family.model(text_only).logits)
    assert torch.equal(family.model(batch).logits, plain)  # the backbone called directly stays unedited


@pytest.fixture
def every_expert_fires(monkeypatch):
    """Routing seam: the hard filter keeps every expert for inputs with an image (an untrained router is random)."""
    import easyedit_liveedit.liveedit.library as library

    def keep_all(visual_sim, sentinel_sim, has_image=None):
        keep = torch.ones_like(visual_sim, dtype=torch.bool)
        return keep if has_image is None else keep & has_image[:, None]

    monkeypatch.setattr(library, "hard_filter", keep_all)


def test_generate_first_token_is_the_routed_forwards_argmax(family, editor, every_expert_fires):
    _add_strong_experts(editor, family.samples(2, seed=1))
    image = family.samples(2, seed=2)["image"]
    prompts = [PROMPTS[1], PROMPTS[0]]  # different lengths: generated in two groups
    answers = editor.generate({"image": image, "text_input": prompts}, max_new_tokens=1)
    longer = editor.generate({"image": image, "text_input": prompts}, max_new_tokens=4)
    assert len(longer) == 2 and all(isinstance(a, str) for a in longer)
    tok = family.tok
    stop = {tok("\n", add_special_tokens=False).input_ids[-1], tok.eos_token_id}
    for b, prompt in enumerate(prompts):
        run = {"image": image[b : b + 1], "text_input": [prompt], "labels": None}
        run["prompts_len"] = editor.adapter.prompts_len(family.model, [prompt])
        with torch.no_grad():
            logits = editor(run).logits[0]  # (T, V); the forward may append the end symbol after the prompt
        n_end = len(tok(prompt + family.end_sym).input_ids) - len(tok(prompt).input_ids)
        expected = int(logits[-1 - n_end].argmax())  # the prediction after the prompt's last token
        assert answers[b] == ("" if expected in stop else tok.decode([expected], skip_special_tokens=True).strip())


# ----------------------------------------------------------------------------------- LLaVA wrapper contract
@pytest.mark.skipif(TARGET != "wheel", reason="LLaVA-1.5 runs on the wheel's stack only (EasyEdit main has none)")
def test_bare_llava_asks_to_be_wrapped_and_the_template_must_hold_one_image(tmp_path):
    wrapped = _build_llava(tmp_path)
    with pytest.raises(NotImplementedError, match="LlavaForEditing"):
        adapter_for(wrapped.llava)
    with pytest.raises(ValueError, match="exactly once"):
        LlavaForEditing(wrapped.llava, wrapped.tokenizer, image_prompt="USER: no image here")


def test_generation_counts_prompts_like_easyedit_does_for_the_family(family, editor):
    """``generate`` builds its own samples: its ``prompts_len`` must be EasyEdit's, or routing reads other tokens."""
    assert editor.adapter.prompts_len(family.model, PROMPTS) == family.samples(2)["prompts_len"]


def test_easyedit_entry_point_and_metric_run_on_the_family(family, tmp_path):
    """``ALG_MULTIMODAL_DICT['LiveEdit']`` with this family's ``model_name``, then EasyEdit's own accuracy metric."""
    from easyeditor.evaluate import compute_multimodal_edit_quality, prepare_multimodal_edit
    from easyeditor.util.alg_dict import ALG_MULTIMODAL_DICT

    from easyedit_liveedit.easyedit.entry import release_editor

    untrained = LiveEdit(family.model, family.hparams())
    torch.save({"model": untrained.state_dict(), "step": 0}, tmp_path / "liveedit.pt")
    untrained.detach_hooks()
    hparams = family.hparams(archive=str(tmp_path / "liveedit.pt"))
    image = family.samples(1)["image"][0]  # (3, H, W), as MultimodalEditor's requests carry it
    request = {"prompt": PROMPTS[0], "target": TARGETS[0], "image": image}
    try:
        edited, weights_copy = ALG_MULTIMODAL_DICT["LiveEdit"](family.model, family.tok, [request], hparams)
        assert isinstance(edited, LiveEdit) and len(edited.library) == 1
        assert callable(weights_copy) and dict(weights_copy) == {}  # main calls it; the wheel copies nothing
        with torch.no_grad():
            acc, _ = compute_multimodal_edit_quality(
                edited, prepare_multimodal_edit(hparams, family.tok, TARGETS[0], PROMPTS[0], image)
            )
        assert 0.0 <= float(acc) <= 1.0
    finally:
        release_editor(family.model)  # the module-scoped model outlives this test


# ------------------------------------------------------------------------------ gradient checkpointing
@pytest.mark.skipif(TARGET != "wheel", reason="LLaVA-1.5 runs on the wheel's stack only (EasyEdit main has none)")
@pytest.mark.parametrize("family", ["llava"], indirect=True)
def test_meta_training_under_gradient_checkpointing_gets_the_gradients_of_plain_training(family, monkeypatch):
    """Guards: with the language model checkpointed layer by layer (reentrant or not), a training pass adds the
    residual at layer l_e exactly once per forward (a recomputation in backward would run the hook after the pass has
    ended and add nothing), so LiveEdit's networks get the gradients they get without checkpointing."""
    from easyedit_liveedit.liveedit.layer import Mix
    from easyedit_liveedit.liveedit.losses import answer_cross_entropy

    residuals = []
    at_layer = Mix.at_layer

    def recording(self, h, layout, net):
        out = at_layer(self, h, layout, net)
        residuals.append((out - h).detach().clone())
        return out

    monkeypatch.setattr(Mix, "at_layer", recording)
    llava, language_model = family.model.llava, family.model.llava.model.language_model
    editor = LiveEdit(family.model, family.hparams())
    samples = family.samples(2)
    switch = torch.ones(2, 2, dtype=torch.bool)

    def gradients() -> dict[str, Tensor]:
        editor.net.zero_grad()
        residuals.clear()
        torch.manual_seed(0)
        output, _ = editor.forward_with_experts(samples, editor.make_experts(samples), switch)
        answer_cross_entropy(output.logits, output.labels).backward()
        assert len(residuals) == 1
        return {name: p.grad.clone() for name, p in editor.net.named_parameters() if p.grad is not None}

    try:
        editor.train()
        plain, plain_residual = gradients(), residuals[0]
        assert plain
        for reentrant in (False, True):
            llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            language_model.train()  # transformers checkpoints only layers in training mode
            checkpointed = gradients()
            torch.testing.assert_close(residuals[0], plain_residual)
            assert checkpointed.keys() == plain.keys(), reentrant
            for name in plain:
                torch.testing.assert_close(checkpointed[name], plain[name], msg=f"{name}, reentrant={reentrant}")
            assert all(layer.gradient_checkpointing for layer in language_model.layers)  # restored after the pass
    finally:
        llava.gradient_checkpointing_disable()
        llava.eval()
        editor.detach_hooks()
