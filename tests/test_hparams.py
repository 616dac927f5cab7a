"""The shipped YAMLs load and round-trip; every bad input names the key and the file."""

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from easyedit_liveedit import LiveEditMultimodalHparams, LiveEditMultimodalTrainingHparams

ROOT = Path(__file__).resolve().parents[1]
# the toy YAMLs scale the method down to the toy backbone; llavaov-7b and qwen2vl-7b are EasyEdit main's backbones
REAL_BACKBONES = {"blip2", "minigpt4", "llava", "llavaov-7b", "qwen2vl-7b"}
EDIT_LAYER = {"llavaov-7b": 18, "qwen2vl-7b": 18}  # the paper's 21 of 32 layers, scaled to 28 (others: 21)
EDIT_YAMLS = sorted((ROOT / "hparams" / "LiveEdit").glob("*.yaml"))
TRAIN_YAMLS = sorted((ROOT / "hparams" / "TRAINING" / "LiveEdit").glob("*.yaml"))
CASES = [(path, LiveEditMultimodalHparams) for path in EDIT_YAMLS] + [
    (path, LiveEditMultimodalTrainingHparams) for path in TRAIN_YAMLS
]


def test_all_real_backbones_ship_both_yamls():
    for folder in (EDIT_YAMLS, TRAIN_YAMLS):
        assert REAL_BACKBONES | {"toy-blip2"} <= {p.stem for p in folder}


@pytest.mark.parametrize(("path", "cls"), CASES, ids=lambda c: getattr(c, "stem", None) or c.__name__)
def test_yaml_round_trip(path, cls, tmp_path):
    hparams = cls.from_hparams(path)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= {f.name for f in dataclasses.fields(cls)}
    for key, value in raw.items():  # every key in the file arrives with its value
        loaded = getattr(hparams, key)
        if isinstance(loaded, torch.dtype):  # `dtype: torch.bfloat16` arrives as the torch dtype EasyEdit main needs
            loaded = str(loaded)
        assert loaded == (float(value) if isinstance(loaded, float) else value), key
    values = {k: v for k, v in dataclasses.asdict(hparams).items() if k != "source"}
    values = {k: str(v) if isinstance(v, torch.dtype) else v for k, v in values.items()}
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(values))
    again = cls.from_hparams(copy)
    assert again == hparams
    assert again.source == str(copy)


def test_paper_defaults_in_shipped_yamls():
    for path, cls in (case for case in CASES if case[0].stem in REAL_BACKBONES):
        h = cls.from_hparams(path)
        assert (h.edit_layer, h.cross_attn_dim, h.num_heads, h.rank, h.lora_scale, h.num_key_slots) == (
            EDIT_LAYER.get(path.stem, 21),
            1024,
            8,
            4,
            5.0,
            4,
        ), path
    for path in (p for p in TRAIN_YAMLS if p.stem in REAL_BACKBONES):
        h = LiveEditMultimodalTrainingHparams.from_hparams(path)
        assert (h.opt, h.lr) == ("Adam", 1e-4)
        assert {h.rel_lambda, h.gen_lambda, h.loc_lambda, h.soft_route_lambda, h.hard_route_lambda} == {1.0}


def test_yaml_suffix_may_be_omitted():
    path = EDIT_YAMLS[0]
    assert LiveEditMultimodalHparams.from_hparams(path.with_suffix("")) == LiveEditMultimodalHparams.from_hparams(path)


def _write(tmp_path, base: Path, **changes) -> Path:
    data = yaml.safe_load(base.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del data[key]
        else:
            data[key] = value
    out = tmp_path / "bad.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


_DELETE = object()
EDIT = ROOT / "hparams" / "LiveEdit" / "blip2.yaml"
TRAIN = ROOT / "hparams" / "TRAINING" / "LiveEdit" / "blip2.yaml"


@pytest.mark.parametrize(
    ("base", "cls", "changes", "error", "key"),
    [
        (EDIT, LiveEditMultimodalHparams, {"edit_lyer": 3}, TypeError, "edit_lyer"),
        (EDIT, LiveEditMultimodalHparams, {"name": _DELETE}, ValueError, "name"),
        (EDIT, LiveEditMultimodalHparams, {"alg_name": _DELETE}, ValueError, "alg_name"),
        (EDIT, LiveEditMultimodalHparams, {"alg_name": "MEND"}, ValueError, "alg_name"),
        (TRAIN, LiveEditMultimodalTrainingHparams, {"alg": "SERAC"}, ValueError, "alg"),
        (TRAIN, LiveEditMultimodalTrainingHparams, {"alg_name": "LiveEdit"}, TypeError, "alg_name"),
        (EDIT, LiveEditMultimodalHparams, {"rank": "four"}, TypeError, "rank"),
        (EDIT, LiveEditMultimodalHparams, {"rank": True}, TypeError, "rank"),
        (EDIT, LiveEditMultimodalHparams, {"rank": 2.5}, TypeError, "rank"),
        (EDIT, LiveEditMultimodalHparams, {"lora_scale": "big"}, TypeError, "lora_scale"),
        (EDIT, LiveEditMultimodalHparams, {"name": None}, TypeError, "name"),
        (EDIT, LiveEditMultimodalHparams, {"model_name": "gpt2"}, ValueError, "model_name"),
        (EDIT, LiveEditMultimodalHparams, {"cross_attn_dim": 100}, ValueError, "cross_attn_dim"),
        (EDIT, LiveEditMultimodalHparams, {"rank": 0}, ValueError, "rank"),
        (EDIT, LiveEditMultimodalHparams, {"soft_weights": "mean"}, ValueError, "soft_weights"),
        (TRAIN, LiveEditMultimodalTrainingHparams, {"soft_route_terms": "none"}, ValueError, "soft_route_terms"),
        (EDIT, LiveEditMultimodalHparams, {"index": "annoy"}, ValueError, "index"),
        (EDIT, LiveEditMultimodalHparams, {"index_nprobe": 0}, ValueError, "index_nprobe"),
        (EDIT, LiveEditMultimodalHparams, {"index_nlist": 64, "index_train_size": 32}, ValueError, "index_train_size"),
        (EDIT, LiveEditMultimodalHparams, {"index_threads": "all"}, TypeError, "index_threads"),
        (TRAIN, LiveEditMultimodalTrainingHparams, {"train_base": True}, ValueError, "train_base"),
        (TRAIN, LiveEditMultimodalTrainingHparams, {"questions": "template"}, ValueError, "questions"),
        (TRAIN, LiveEditMultimodalTrainingHparams, {"save": "yes"}, TypeError, "save"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, base, cls, changes, error, key):
    path = _write(tmp_path, base, **changes)
    with pytest.raises(error) as info:
        cls.from_hparams(path)
    message = str(info.value)
    assert f"'{key}'" in message and str(path) in message


def test_scientific_notation_string_becomes_float(tmp_path):
    path = _write(tmp_path, TRAIN, lr="3e-5")
    assert LiveEditMultimodalTrainingHparams.from_hparams(path).lr == pytest.approx(3e-5)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        LiveEditMultimodalHparams.from_hparams(tmp_path / "nope.yaml")


def test_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="list.yaml"):
        LiveEditMultimodalHparams.from_hparams(path)


def test_check_paths_names_the_missing_key_and_file(tmp_path):
    (tmp_path / "opt").mkdir()
    (tmp_path / "images").mkdir()
    path = _write(
        tmp_path,
        EDIT,
        name=str(tmp_path / "opt"),
        tokenizer_name=str(tmp_path / "opt"),
        coco_image=str(tmp_path / "images"),
        rephrase_image=str(tmp_path / "images"),
        qformer_checkpoint=None,
        qformer_name_or_path=None,
        state_dict_file=None,
        archive=str(tmp_path / "missing-archive"),
    )
    hparams = LiveEditMultimodalHparams.from_hparams(path)
    with pytest.raises(FileNotFoundError) as info:
        hparams.check_paths()
    assert "'archive'" in str(info.value) and str(path) in str(info.value)
    hparams.archive = None
    hparams.check_paths()  # everything that remains exists


def test_chat_vlm_training_refuses_editor_questions(tmp_path):
    """EasyEdit main's datasets render LLaVA-OneVision / Qwen2-VL questions with the chat template already; the
    editor rendering (questions.py) would rewrite batches that have no text_input."""
    bad = _write(tmp_path, ROOT / "hparams" / "TRAINING" / "LiveEdit" / "qwen2vl-7b.yaml", questions="editor")
    with pytest.raises(ValueError, match=r"bad\.yaml: key 'questions' must be 'dataset'"):
        LiveEditMultimodalTrainingHparams.from_hparams(bad)


def test_model_name_of_an_unsupported_hugging_face_backbone_names_the_key(tmp_path):
    bad = _write(tmp_path, EDIT, model_name="./hugging_cache/qwen3-vl-4b")
    with pytest.raises(ValueError, match=r"bad\.yaml: key 'model_name' is './hugging_cache/qwen3-vl-4b'"):
        LiveEditMultimodalHparams.from_hparams(bad)
