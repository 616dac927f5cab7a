"""The probes under ``benchmarks/`` that score records read the dev split and refuse the eval split.

Probes, ablations and choices of settings are made on the dev split (carved from the train split); only the
final scoring reads the eval split. Each probe is called as its command line would be, with an eval split: it must
stop before loading anything, with an error that names the dev split to use.
"""

from __future__ import annotations

import importlib.util

import pytest

from easyedit_liveedit.toyworld.layout import PROJECT_ROOT

BENCHMARKS = PROJECT_ROOT / "benchmarks"
# probe script -> the eval split names its --split could be given
PROBES = {
    "routing_probe": ("vqa_eval", "caption_eval"),
    "rendering_probe": ("vqa_eval",),
    "generator_probe": ("vqa_eval",),
    "instance_probe": ("vqa_eval",),
    "world_probe": ("eval", "vqa_eval"),
}


def _probe(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the probes import their sibling liveedit_speed
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_probe_that_scores_records_is_listed():
    """A new ``*_probe.py`` must be added here (and refuse the eval split)."""
    assert {path.stem for path in BENCHMARKS.glob("*_probe.py")} == set(PROBES)


@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe_refuses_the_eval_split(name, monkeypatch, capsys):
    """Guards that a probe cannot be pointed at the eval split: argparse stops it (exit 2) with the reason."""
    probe = _probe(name, monkeypatch)
    monkeypatch.setattr("easyedit_liveedit.toyworld.load", _no_world)
    for split in PROBES[name]:
        with pytest.raises(SystemExit) as stopped:
            probe.main(["--split", split])
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert f"{split!r} is an eval split, which only the final scoring reads" in err, err
        assert repr(split.replace("eval", "dev")) in err


def _no_world(*args, **kwargs):
    raise AssertionError("the probe loaded a world before refusing the eval split")
