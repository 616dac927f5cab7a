"""The toy worlds: offline MMEdit benchmarks on real handwritten digits and a small pretrained BLIP-2-OPT built
with EasyEdit's own ``Blip2OPT`` class, so EasyEdit's editor, trainer, datasets, metrics and MEND run on them
unchanged on a CPU. ``load()`` returns a cached world, making it on first use: from the backbone shipped in the
repository where there is one (``artifacts.py``: the data is rebuilt, the backbone copied and checked), else by
building and pretraining it. ``python -m easyedit_liveedit.toyworld`` makes it and prints a summary (``--ship``
ships its backbone).

Two worlds, one subpackage each over the shared parts in this package; same layout on disk, same ``ToyWorld``
handle, same EasyEdit entry points:

* ``scenes/`` (configurations ``scenes``, the default, and ``scenes_small`` for unit tests): E-VQA's structure,
  which a router needs. A subject is a 2x2 composite of four scans with an ink per digit and a paper colour,
  every eval edit has its own subject, ``image_rephrase`` renders the same content from other scans, and twelve
  question kinds ask about one named cell's digit or ink, or the paper.
* ``digits/`` (``digits``, a named stress configuration, and ``small`` for unit tests): one scan per subject,
  five question kinds about its digit; ``image_rephrase`` is the scan through a small rotation/scale/shift. Two
  scans of one digit look alike, so its subjects are near duplicates.

Scopes (why generality and locality are well defined), in both worlds:

* An edit is one record: a subject (``image``) and one question (``src``), whose true answer ``pred`` becomes
  the counterfactual ``alt``. Every answer is a function of the subject's content, so the truth is known.
* In scope, by construction: the same question in another phrasing (``rephrase``: T-Generality) and the same
  subject's other image (``image_rephrase``: M-Generality). Both have the same true answer as ``src`` before
  the edit, and the pretrained model answers them as it answers ``src``.
* Out of scope: a text-only arithmetic question (``loc``, e.g. "what is two plus five?" -> "seven"), which the
  LM knows in four phrasings and which involves no image (T-Locality); and a question of another kind about a
  subject from a pool that is never edited (``m_loc``: M-Locality). Neither shares the edited subject nor its
  question, so a perfect editor leaves their answers unchanged.
* No two edits of a split conflict; train, dev and eval splits, the ``m_loc`` pool and the classification pool
  use disjoint scans; pretraining sees only the train pool.
* The dev split (``vqa_dev`` / ``caption_dev``) is carved from the train pool: its scans are in no train record,
  so meta-training never sees them (the scenes world keeps them out of pretraining too; the digits world does
  not). Probes, ablations and choices of settings read it; only the final scoring reads the eval split, and
  ``probe_split`` refuses the eval split's names.
* The EMT-style probe (``data/classification.json``) asks held-out subjects a prompt that lists all ten class
  names; accuracy before and after T edits shows forgetting.

The ``small`` and ``scenes_small`` configurations train for seconds and answer near chance: they exercise code
paths, not accuracy.
"""

from ..easyedit.validate import validate_file, validate_records
from .digits.config import DIGITS, SMALL, ToyWorldConfig
from .layout import CACHE_ENV, Layout, cache_root
from .scenes.config import SCENES, SCENES_SMALL, SceneWorldConfig
from .world import CONFIGS, DEFAULT_CONFIG, EVAL_SPLITS, ToyWorld, build, load, probe_split

__all__ = [
    "CACHE_ENV",
    "CONFIGS",
    "DEFAULT_CONFIG",
    "DIGITS",
    "EVAL_SPLITS",
    "SCENES",
    "SCENES_SMALL",
    "SMALL",
    "Layout",
    "SceneWorldConfig",
    "ToyWorld",
    "ToyWorldConfig",
    "build",
    "cache_root",
    "load",
    "probe_split",
    "validate_file",
    "validate_records",
]
