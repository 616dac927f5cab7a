"""A LiveEdit archive records the config it was trained with, and loading it under another config is refused."""

from __future__ import annotations

import pytest
import torch
from helpers import small_archives, toy_hparams

from easyedit_liveedit.easyedit.archive import CONFIG_KEY, check_config
from easyedit_liveedit.easyedit.entry import editor_for, release_editor
from easyedit_liveedit.liveedit.config import LiveEditConfig


@pytest.fixture(scope="module")
def archive(small_world, tmp_path_factory):
    """The session's LiveEdit archive, written by EasyEdit's trainer loop (the plugin's trainer's ``save_state``)."""
    return small_archives(tmp_path_factory, small_world) / "models" / "LiveEdit" / "blip2"


def test_the_trainer_records_the_config_in_the_archive(small_world, archive):
    saved = torch.load(archive, weights_only=True)
    trained = toy_hparams(small_world, "LiveEdit", training=True)
    assert saved[CONFIG_KEY] == trained.config_dict()
    assert {"model", "opt", "step", "val_stats"} <= set(saved)  # EasyEdit's own entries are all there


@pytest.mark.parametrize(
    ("change", "field"),
    [({"lora_scale": 1000.0}, "lora_scale"), ({"num_heads": 2}, "num_heads"), ({"token_types": False}, "token_types")],
)
def test_an_archive_refuses_a_config_that_computes_otherwise(small_world, archive, change, field):
    """Guards: an editing YAML whose computation fields differ from the archive's (a value that changes no weight's
    shape, as ``lora_scale`` or ``num_heads``, included) is refused, naming the archive, the field and both values;
    the backbone is left without a hook.

    Seen failing with ``LiveEditConfig.mismatches`` returning nothing: ``lora_scale`` and ``num_heads`` then loaded
    without a word, as every archive did before archives recorded their config.
    """
    model = small_world.load_model()
    trained = toy_hparams(small_world, "LiveEdit", training=True)
    hparams = toy_hparams(small_world, "LiveEdit", archive=str(archive), **change)
    with pytest.raises(ValueError) as error:
        editor_for(model, hparams)
    message = str(error.value)
    assert str(archive) in message and f"{field}={getattr(trained, field)!r}" in message
    assert f"{field}={change[field]!r}" in message
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_an_archive_without_a_config_loads_with_its_shapes_checked(small_world, archive, tmp_path):
    """An archive written before configs were recorded (a plain EasyEdit checkpoint) loads; then only the weights'
    names and shapes can be checked: ``lora_scale`` passes unseen, another ``rank`` is refused naming a tensor."""
    legacy = tmp_path / "legacy.pt"
    saved = torch.load(archive, weights_only=True)
    torch.save({key: value for key, value in saved.items() if key != CONFIG_KEY}, legacy)
    model = small_world.load_model()
    editor = editor_for(model, toy_hparams(small_world, "LiveEdit", archive=str(legacy), lora_scale=1000.0))
    assert all(torch.equal(editor.state_dict()[k], v) for k, v in saved["model"].items())
    release_editor(model)
    with pytest.raises(ValueError, match=r"legacy.pt: tensor 'generator\..*' of the LiveEdit archive has shape"):
        editor_for(model, toy_hparams(small_world, "LiveEdit", archive=str(legacy), rank=8))


def test_soft_weights_is_compared_and_soft_route_terms_is_not():
    """Guards the roles of the ablation flags: ``soft_weights`` changes what editing computes, so an archive trained
    with one value refuses the other; ``soft_route_terms`` only shaped training, so any value loads the archive; a
    record written before either existed counts as their defaults. Seen failing with ``soft_weights`` given the role
    ``training`` (the archive trained with averaged experts loaded under learned weights without a word)."""
    trained = LiveEditConfig(soft_weights="average", soft_route_terms="relative")
    archive = {CONFIG_KEY: trained.config_dict()}
    with pytest.raises(ValueError, match="soft_weights='average', but editing.yaml sets soft_weights='learned'"):
        check_config(archive, LiveEditConfig(soft_route_terms="relative"), "a.pt", "editing.yaml")
    check_config(archive, LiveEditConfig(soft_weights="average"), "a.pt", "editing.yaml")  # another training value
    older = {k: v for k, v in LiveEditConfig().config_dict().items() if k not in ("soft_weights", "soft_route_terms")}
    check_config({CONFIG_KEY: older}, LiveEditConfig(soft_route_terms="absolute"), "old.pt", "editing.yaml")
    with pytest.raises(ValueError, match="soft_weights='learned', but editing.yaml sets soft_weights='average'"):
        check_config({CONFIG_KEY: older}, LiveEditConfig(soft_weights="average"), "old.pt", "editing.yaml")
