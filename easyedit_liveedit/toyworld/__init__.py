"""The toy world: an offline MMEdit benchmark on real handwritten digits and a small pretrained BLIP-2-OPT
built with EasyEdit's own ``Blip2OPT`` class, so EasyEdit's editor, trainer, datasets, metrics and MEND run on
it unchanged on a CPU. ``load()`` returns a cached world (building it on first use); ``python -m
easyedit_liveedit.toyworld`` builds it and prints a summary.

Scopes (why generality and locality are well defined):

* An edit is one record: a specific scan (``image``) and one question kind (``src``), whose true answer
  ``pred`` becomes the counterfactual ``alt``. Every answer is a function of the digit, so the truth is known.
* In scope, by construction: the same question in another phrasing (``rephrase``: T-Generality) and the same
  scan seen through a small rotation/scale/shift (``image_rephrase``: M-Generality). Both have the same true
  answer as ``src`` before the edit, and the pretrained model answers them as it answers ``src``.
* Out of scope: a text-only arithmetic question (``loc``, e.g. "what is two plus five?" -> "seven"), which the
  LM knows in four phrasings and which involves no image (T-Locality); and a question of another kind about a
  scan of another digit from a pool that is never edited (``m_loc``: M-Locality). Neither shares the edited
  scan nor its question, so a perfect editor leaves their answers unchanged.
* Within a split no scan is asked the same kind twice (no two edits conflict); train, dev and eval splits, the
  ``m_loc`` pool and the classification pool use disjoint scans; pretraining sees only the train pool.
* The dev split (``vqa_dev`` / ``caption_dev``) is carved from the train pool: its scans are in no train record,
  so meta-training never sees them (pretraining does in this world; the scenes world keeps them out of both).
  Probes, ablations and choices of settings read it; only the final scoring reads the eval split, and
  ``probe_split`` refuses the eval split's names.
* The EMT-style probe (``data/classification.json``) asks held-out scans a prompt that lists all ten class
  names; accuracy before and after T edits shows forgetting.

Configurations: ``default`` (pretrained for a few minutes to >= 90% per question kind) and ``small`` (for unit
tests: a few dozen scans, a model a few times smaller, trained for ~30 steps, i.e. seconds; it answers near
chance and exists to exercise code paths, not to be accurate).

The scenes world (``scenes``, and ``scenes_small`` for unit tests; the ``scenes/`` subpackage, beside ``digits/``
over the shared parts in this package) has E-VQA's structure, which a router needs:
a subject is a 2x2 composite of four scans with an ink per digit and a paper colour, every eval edit has its
own subject, ``image_rephrase`` renders the same content from other scans, and twelve question kinds ask about
a cell's digit or ink, the paper, an ink's count or place, or a digit's ink. Same layout on disk, same
``ToyWorld`` handle, same EasyEdit entry points.
"""

from ..easyedit.validate import validate_file, validate_records
from .digits.config import DEFAULT, SMALL, ToyWorldConfig
from .layout import CACHE_ENV, Layout, cache_root
from .scenes.config import SCENES, SCENES_SMALL, SceneWorldConfig
from .world import CONFIGS, EVAL_SPLITS, ToyWorld, build, load, probe_split

__all__ = [
    "CACHE_ENV",
    "CONFIGS",
    "DEFAULT",
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
