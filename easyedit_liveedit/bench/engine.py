"""The comparison runner: every editor, one lifelong edit sequence each, scored by EasyEdit's own metric code.

For each method ("T sequential edits", as the literature counts them):

1. its EasyEdit hparams are loaded and its archive is trained or loaded (``archives.py``);
2. a fresh backbone is built by EasyEdit's constructor; the first ``T_max`` records of the eval split (``chunked``:
   all of them) are read by EasyEdit's own dataset class with the method's hparams (every method edits the same
   records in the same order; a fingerprint of the sequence is recorded per method so that this can be checked);
3. pre-edit outputs of every record that will be scored are computed on the unedited backbone (``easyedit.scoring``,
   shared with the editor API; locality compares against them);
4. the records are edited one after another through ``ALG_MULTIMODAL_DICT[alg_name]`` (EasyEdit's editing
   entry, as ``MultimodalEditor`` calls it) and scored with ``compute_multimodal_edit_results``, with the EMT probe
   (``emt_probe.py``) after the ``T``-th edit, for every ``T`` in ``edits``. The ``protocol`` says what is edited
   before a record is scored (``PROTOCOLS``):

   - ``cumulative`` (the literature's "T sequential edits"): the first ``T_max`` records on one backbone, never
     restored; after the ``T``-th edit all of the first ``T`` are scored;
   - ``immediate`` (EasyEdit main's ``sequential_edit=True``): the same sequence, but each record is scored right
     after its own edit, and the row after ``T`` is the mean of those ``T`` scores;
   - ``chunked`` (the LiveEdit authors' protocol): for each ``T`` every usable eval record, not only the first
     ``T_max``, is cut into consecutive chunks of ``T`` (a trailing partial chunk is dropped); each chunk is edited
     from the unedited backbone (a fresh one per chunk) and then scored as ``cumulative`` scores after ``T`` edits;
     the row is the mean over all scored records, ``Row.chunks`` says over how many chunks (``_run_chunks``);
5. a failure (non-finite logits, an exception, running out of memory) ends that method's sequence and fills
   its remaining rows with the failure; nothing is dropped.

In-context editors (IKE) change no weight: EasyEdit's entry returns the demonstrations for the edit, and
``MultimodalEditor`` scores each record with its own edit's demonstrations (``compute_icl_multimodal_edit_quality``).
The runner does the same (``ike_offline.in_context_scores``): after edit ``T`` each of the first ``T`` records is asked
with the demonstrations retrieved when it was edited, fitted to the backbone's context window. EasyEdit's IKE
keeps no memory of earlier edits, so its scores cannot change with ``T``; its EMT probe asks the unchanged backbone.
``chunked`` runs it chunk by chunk in the same way, on its one backbone; ``immediate`` is refused for it.

``processes.compare_in_processes`` runs methods side by side, each in its own process (the ``compare`` command's
``run.workers``): a method's rows do not depend on where it runs, since every method starts from the same seed.

Memory is the process's resident set size (RSS), sampled every 20 ms while the method runs (tracemalloc does not
see torch's allocations); the figure is the peak RSS of the whole process during that method's run.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import logging
import math
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..easyedit import compat, scoring
from ..easyedit.placement import input_device, to_device
from ..easyedit.validate import image_roots, validate_file
from . import ike_offline
from .emt_probe import ProbeResult, classification_accuracy
from .rss import PeakRss

LOG = logging.getLogger(__name__)

_STATEFUL_EXECUTORS = ("MEND", "SERAC", "SERAC_MULTI")  # EasyEdit executors that bind the first model they see
# EasyEdit's SERAC_MULTI.forward tests `input_ids[:, -1] != 13` as one boolean: it reads one sample per call.
_ONE_SAMPLE_PER_CALL = ("SERAC", "SERAC_MULTI")
# EasyEdit main's WISE keeps the requests it edited, for replay and merging, in lists of its module (`global`)
_MODULE_MEMORY = {"WISE": ("easyeditor.models.wise.WISE", ("edit_history", "merge_group_edit_history"))}
_IN_CONTEXT = ("IKE",)  # entries that return demonstrations, not a model (MultimodalEditor's `alg_name == 'IKE'`)


@dataclass
class MethodRun:
    """What the runner needs to run one method (built by the CLI from the Hydra config).

    Attributes:
        name: display name (``LiveEdit``, ``MEND``, ...).
        hparams: the editing hparams object (``alg_name`` picks ``ALG_MULTIMODAL_DICT``'s entry); its
            ``archive`` must exist, or ``prepare`` must make it exist.
        prepare: called once before editing (trains or checks the archive); may raise.
        not_run: a reason the method cannot run here; the table shows ``not run: <reason>``.
        edit_kwargs: called after ``prepare``; extra keyword arguments of every editing call (IKE's ``train_ds``).
        training, train_json: for a method that meta-trains, its training hparams and train file (what an archive
            is trained from; the ``ship`` command records them).
    """

    name: str
    hparams: Any = None
    prepare: Callable[[], None] | None = None
    not_run: str | None = None
    edit_kwargs: Callable[[], dict] | None = None
    training: Any = None
    train_json: Any = None


@dataclass
class Backbone:
    """How to build a fresh, unedited backbone and read data for it (the toy world or EasyEdit's own path).

    Attributes:
        load: hparams -> ``(model, tokenizer)``, called inside ``patches()``.
        patches: context in which EasyEdit's constructors and datasets run on this machine.
        load_image: relative image path -> processed tensor, for the EMT probe.
    """

    load: Callable[[Any], tuple[Any, Any]]
    patches: Callable[[], contextlib.AbstractContextManager]
    load_image: Callable[[str], torch.Tensor] | None = None


PROTOCOLS = ("cumulative", "immediate", "chunked")  # when each record is scored, from what (module docstring, step 4)


@dataclass
class CompareSettings:
    """The run: which records, how many edits, when they are scored, where the EMT probe's images are."""

    eval_json: str
    dataset_class: str = "VQADataset"  # or CaptionDataset (EasyEdit's)
    edits: list[int] = field(default_factory=lambda: [1, 10, 100, 1000])
    classification_records: list[dict] | None = None  # None: no EMT probe for this data set
    probe_batch_size: int = 16
    score: bool = True  # False: only the EMT probe (the `probe` command), no EasyEdit metrics
    seed: int | None = None  # re-seed before each method, so its rows do not depend on the methods run before it
    protocol: str = "cumulative"  # cumulative | immediate | chunked (module docstring, step 4)

    def __post_init__(self) -> None:
        if not self.edits or any(not isinstance(t, int) or t < 1 for t in self.edits):
            raise ValueError(f"edits: expected positive integers, got {self.edits!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        self.edits = sorted(set(self.edits))


@dataclass
class Row:
    """One line of the table: a method after ``edits`` sequential edits."""

    method: str
    edits: int
    status: str = "ok"
    metrics: dict[str, float] = field(default_factory=dict)
    emt_before: float = math.nan
    emt_after: float = math.nan
    latency_s: float = math.nan  # median seconds per edit (executor call only; the median ignores the first
    # call's one-time setup, e.g. loading the archive, which EasyEdit's executors do lazily; chunked: every chunk's
    # first call includes it, see `_run_chunks`)
    peak_rss_mib: float = math.nan
    sequence: str = ""  # fingerprint of the records this method edited for the row (the first `edits`; chunked: more)
    chunks: int = 1  # how many sequences of `edits` records, each from the unedited backbone, the row averages


def fingerprint(requests: list[dict]) -> str:
    """A short hash of the edit sequence: texts and image tensors, in order."""
    digest = hashlib.sha256()
    for r in requests:
        for key in sorted(r):
            value = r[key]
            if isinstance(value, torch.Tensor):
                digest.update(value.detach().float().cpu().numpy().round(4).tobytes())
            else:
                digest.update(repr(value).encode())
    return digest.hexdigest()[:12]


class _FiniteWatch:
    """Calls the edited model as EasyEdit's metric code does, remembering whether any logit was non-finite."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.finite = True

    def parameters(self) -> Any:
        """The watched model's parameters (``placement.input_device`` finds where its inputs go through them)."""
        return self.model.parameters() if hasattr(self.model, "parameters") else iter(())

    def __call__(self, samples: dict) -> Any:
        output = self.model(samples)
        logits = output if isinstance(output, torch.Tensor) else output.logits
        self.finite &= bool(torch.isfinite(logits).all())
        return output


def _reset_executor(alg_name: str) -> None:
    """Make EasyEdit's executor forget the backbones it edited. MEND's and SERAC's executors keep the first model they
    were called with (``is_init``): a fresh backbone needs a fresh binding, or the edits would land on the previous
    model. EasyEdit main's WISE keeps its edits in module-level lists, which it would replay and merge into the next
    backbone."""
    memory = _MODULE_MEMORY.get(alg_name)
    module = sys.modules.get(memory[0]) if memory is not None else None
    if module is not None:  # not imported: nothing to forget
        for name in memory[1]:
            setattr(module, name, [])
    if alg_name not in _STATEFUL_EXECUTORS:
        return
    apply_fn = importlib.import_module("easyeditor.util.alg_dict").ALG_MULTIMODAL_DICT[alg_name]
    executor = getattr(apply_fn, "__self__", None)
    if executor is not None and getattr(executor, "is_init", False):
        executor.reset_model()


def _failure(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0][:160]
    if isinstance(error, MemoryError) or "out of memory" in text.lower():
        return f"out of memory ({text})"
    return f"error ({text})"


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Editing:
    """One method's editing entry and what each call of it needs, shared by the protocols' loops."""

    method: MethodRun
    backbone: Backbone
    settings: CompareSettings
    progress: bool
    apply_fn: Callable[..., Any]  # ALG_MULTIMODAL_DICT[alg_name]
    extra: dict  # the method's extra keyword arguments of every editing call (IKE's train_ds)

    @property
    def hparams(self) -> Any:
        return self.method.hparams

    @property
    def in_context(self) -> bool:
        return self.hparams.alg_name in _IN_CONTEXT

    def read(self, size: int | None) -> list[dict]:
        """The first ``size`` usable eval records (None: all of them) as requests on the CPU, read by EasyEdit's
        dataset class with the method's hparams; fewer than the largest edit count is an error."""
        dataset = getattr(importlib.import_module("easyeditor"), self.settings.dataset_class)
        data = dataset(self.settings.eval_json, config=self.hparams, size=size)
        t_max = self.settings.edits[-1]
        if len(data) < t_max:
            raise ValueError(f"{self.settings.eval_json}: {len(data)} usable records, fewer than {t_max} edits")
        return [scoring.request_from_item(data[i]) for i in range(len(data))]

    def edit(self, model: Any, tok: Any, request: dict, window: int | None) -> tuple[Any, list[str] | None, float]:
        """One edit through EasyEdit's entry, as ``MultimodalEditor`` calls it, restoring nothing.

        Returns ``(model to score, demonstrations, seconds)``: an in-context editor is called with one request, not a
        list (MultimodalEditor's IKE call), changes no weight and gives its demonstrations, fitted to ``window``; any
        other editor gives the edited model and None. The seconds include fitting the demonstrations."""
        kwargs = {"copy": False, "return_orig_weights": False, "keep_original_weight": False, **self.extra}
        start = time.perf_counter()
        if self.in_context:
            examples = self.apply_fn(model, tok, request, self.hparams, **kwargs)
            demonstrations = ike_offline.fit_demonstrations(examples, request, tok, window)
            return model, demonstrations, time.perf_counter() - start
        edited, _ = self.apply_fn(model, tok, [request], self.hparams, **kwargs)
        return edited, None, time.perf_counter() - start

    def score(self, watch: _FiniteWatch, tok: Any, requests: list[dict], contexts: list, what: str) -> list[dict]:
        """EasyEdit's scores of ``requests`` on the edited model; an in-context editor asks each with its own edit's
        demonstrations (``contexts``, in the same order)."""
        scored = tqdm(requests, desc=f"{self.method.name} {what}", leave=False, disable=not self.progress)
        if self.in_context:
            with torch.no_grad():
                return [ike_offline.in_context_scores(watch, self.hparams, tok, r, c)
                        for r, c in zip(scored, contexts, strict=True)]  # fmt: skip
        return [scoring.score(watch, self.hparams, tok, r) for r in scored]

    def probe(self, model: Any, tok: Any) -> ProbeResult:
        """The EMT probe on an edited model (one sample per call for an editor whose forward reads only one)."""
        one_sample = self.hparams.alg_name in _ONE_SAMPLE_PER_CALL
        return _probe(model, tok, self.backbone, self.settings, one_sample=one_sample)


def run_method(method: MethodRun, backbone: Backbone, settings: CompareSettings, progress: bool = True) -> list[Row]:
    """One method's edits under ``settings.protocol``; returns one ``Row`` per edit count (failures included)."""
    rows = [Row(method.name, t) for t in settings.edits]
    if method.not_run:
        for row in rows:
            row.status = f"not run: {method.not_run}"
        return rows
    done: set[int] = set()
    monitor = PeakRss()
    try:
        # every record checked before any work: EasyEdit's datasets fail with a bare KeyError or skip a record silently
        validate_file(settings.eval_json, *image_roots(method.hparams))
        if method.prepare is not None:
            method.prepare()  # training is not part of the editing run's memory or latency
        with monitor, backbone.patches(), compat.cuda_to_cpu(), compat.baseline_fixes():
            apply_fn = importlib.import_module("easyeditor.util.alg_dict").ALG_MULTIMODAL_DICT[method.hparams.alg_name]
            extra = method.edit_kwargs() if method.edit_kwargs is not None else {}
            editing = _Editing(method, backbone, settings, progress, apply_fn, extra)
            _reset_executor(method.hparams.alg_name)
            if settings.protocol == "chunked":
                _run_chunks(editing, rows, done)
            else:
                _run_sequence(editing, rows, done)
    except FloatingPointError as error:
        LOG.warning("%s: %s", method.name, error)
        _fail(rows, done, f"NaN ({error})", include_last=True)
    except Exception as error:  # noqa: BLE001  (any failure must show in the table, never end the comparison)
        LOG.error("%s failed:\n%s", method.name, traceback.format_exc())
        _fail(rows, done, _failure(error))
    finally:
        if method.hparams is not None:
            _reset_executor(method.hparams.alg_name)  # let the executor drop the last backbone
        gc.collect()
    for row in rows:
        row.peak_rss_mib = monitor.peak_mib
    return rows


def _run_sequence(editing: _Editing, rows: list[Row], done: set[int]) -> None:
    """The ``cumulative`` and ``immediate`` protocols: the first ``T_max`` records edited one after another on one
    backbone, never restored (module docstring, step 4). Fills ``rows``; each completed edit count goes into
    ``done``."""
    settings, hparams, name = editing.settings, editing.hparams, editing.method.name
    t_max = settings.edits[-1]
    immediate = settings.score and settings.protocol == "immediate"
    if immediate and editing.in_context:
        raise ValueError(f"protocol 'immediate' is not defined for an in-context editor ({name})")
    requests = editing.read(t_max)
    model, tok = editing.backbone.load(hparams)
    requests = [to_device(r, input_device(model)) for r in requests]  # EasyEdit's datasets yield CPU tensors

    # Pre-edit outputs and the EMT baseline, on the unedited backbone.
    pres = scoring.pre_edit_outputs(model, hparams, tok, requests if settings.score else [], editing.progress,
                                    f"{name} pre-edit")  # fmt: skip
    emt_before = _probe(model, tok, editing.backbone, settings)
    latencies: list[float] = []
    contexts: list[list[str] | None] = []  # in-context editors: each edit's demonstrations
    scored_at_once: list[dict] = []  # immediate protocol: each record's scores right after its own edit
    window = ike_offline.text_window(model)
    bar = tqdm(total=t_max, desc=f"{name} edits", unit="edit", disable=not editing.progress)
    for i, request in enumerate(requests):
        edited, context, seconds = editing.edit(model, tok, request, window)
        latencies.append(seconds)
        contexts.append(context)
        bar.update(1)
        t = i + 1
        watch = _FiniteWatch(edited)
        if immediate:
            scored_at_once.append(scoring.score(watch, hparams, tok, request))
        if t not in settings.edits:
            if not watch.finite:
                raise FloatingPointError(f"non-finite logits at edit {t}")
            continue
        row = rows[settings.edits.index(t)]
        if immediate:
            row.metrics = scoring.mean_scores(scored_at_once, pres[:t])
        elif settings.score:
            posts = editing.score(watch, tok, requests[:t], contexts[:t], f"scores after {t}")
            row.metrics = scoring.mean_scores(posts, pres[:t])
        row.emt_before, row.emt_after = emt_before.accuracy, editing.probe(watch, tok).accuracy
        row.latency_s = float(np.median(latencies))
        row.sequence = fingerprint(requests[:t])
        done.add(t)
        if not watch.finite:
            raise FloatingPointError(f"non-finite logits after edit {t}")
    bar.close()


# Hparams keys whose edits outlive the backbone: LiveEdit's library folder, and the state EasyEdit main's WISE loads
# from `load_path` (once per process). The chunked protocol cannot start a chunk unedited with either set.
_DURABLE_KEYS = ("library_path", "load_path")


def _run_chunks(editing: _Editing, rows: list[Row], done: set[int]) -> None:
    """The ``chunked`` protocol, the LiveEdit authors' (module docstring, step 4). For each edit count T, the usable
    eval records are cut into ``len(records) // T`` consecutive chunks of T records (a trailing partial chunk is
    dropped); each chunk is edited one record after another starting from the unedited backbone, then its T records
    are scored, as ``cumulative`` scores after T edits. Each edit count's row holds:

    - metrics: the mean over every scored record, which equals the mean over the chunks of each chunk's mean (the
      chunks are equal in size); ``chunks``: how many there were;
    - EMT after: the probe after the first chunk only (one probe per edit count, as the other protocols run);
    - latency: the median over every edit of every chunk. Each chunk starts a fresh editor, so each chunk's first
      edit includes the executor's one-time setup (LiveEdit building its editor, MEND and SERAC loading their
      archive): at T=1 every edit does;
    - sequence: the fingerprint of all the records its chunks edited, in order.

    Invariant: every chunk starts from an unedited backbone, a fresh one from ``backbone.load`` with an executor that
    has forgotten the last one (``_reset_executor``), and, with ``settings.seed``, from freshly seeded generators
    (WISE draws random masks): a chunk's scores are those of a ``cumulative`` run of its own records. The pre-edit
    outputs, computed once on the first backbone before any edit, serve every chunk. An in-context editor changes no
    weight and keeps nothing between calls (module docstring), so it keeps its one backbone.
    """
    settings, hparams, name = editing.settings, editing.hparams, editing.method.name
    for key in _DURABLE_KEYS:
        if getattr(hparams, key, None):
            source = getattr(hparams, "source", None) or hparams.alg_name
            raise ValueError(
                f"protocol 'chunked' needs every chunk to start from the unedited backbone, but {key} is set for "
                f"{name} ({source}: {getattr(hparams, key)!r}), whose edits outlive it; unset {key}"
            )
    records = editing.read(None)
    usable = len(records)
    # The records some edit count scores: a prefix of the file, the longest run of whole chunks.
    requests = records[: max(t * (usable // t) for t in settings.edits)]
    model, tok = editing.backbone.load(hparams)
    requests = [to_device(r, input_device(model)) for r in requests]  # EasyEdit's datasets yield CPU tensors

    # Pre-edit outputs and the EMT baseline, on the unedited backbone: the same for every chunk.
    pres = scoring.pre_edit_outputs(model, hparams, tok, requests if settings.score else [], editing.progress,
                                    f"{name} pre-edit")  # fmt: skip
    emt_before = _probe(model, tok, editing.backbone, settings)
    window = ike_offline.text_window(model)
    total = sum(t * (usable // t) for t in settings.edits)
    bar = tqdm(total=total, desc=f"{name} chunked edits", unit="edit", disable=not editing.progress)
    for row in rows:
        t, count = row.edits, usable // row.edits
        latencies: list[float] = []
        posts: list[dict] = []
        for c in range(count):
            if model is None:  # the last chunk edited its backbone: this one starts from an unedited one
                _reset_executor(hparams.alg_name)
                gc.collect()  # a LiveEdit editor and its backbone refer to each other
                model, tok = editing.backbone.load(hparams)
            if settings.seed is not None:  # as `compare` seeds each method: no chunk depends on those before it
                seed_all(settings.seed)
            chunk = requests[c * t : (c + 1) * t]
            edited, contexts = model, []
            for request in chunk:
                edited, context, seconds = editing.edit(model, tok, request, window)
                latencies.append(seconds)
                contexts.append(context)
                bar.update(1)
            watch = _FiniteWatch(edited)
            if settings.score:
                posts += editing.score(watch, tok, chunk, contexts, f"scores, {t} edits, chunk {c + 1}/{count}")
            if c == 0:
                row.emt_before, row.emt_after = emt_before.accuracy, editing.probe(watch, tok).accuracy
            if not watch.finite:
                done.add(t)  # so that this row shows the NaN (`_fail`'s include_last); rows before it stand
                raise FloatingPointError(f"non-finite logits after edit {t} of chunk {c + 1}/{count}")
            if not editing.in_context:
                model = tok = edited = watch = None  # edited: dropped before the next backbone is built
        if settings.score:
            row.metrics = scoring.mean_scores(posts, pres[: count * t])
        row.chunks = count
        row.latency_s = float(np.median(latencies))
        row.sequence = fingerprint(requests[: count * t])
        done.add(t)
        LOG.info("%s: %d edits x %d chunks (records 1-%d of %d usable)", name, t, count, count * t, usable)
    bar.close()


def failed_rows(name: str, edits: list[int], error: BaseException) -> list[Row]:
    """One row per edit count, each showing ``error`` (a method whose run ended before it produced rows)."""
    rows = [Row(name, t) for t in edits]
    _fail(rows, set(), _failure(error))
    return rows


def _fail(rows: list[Row], done: set[int], status: str, include_last: bool = False) -> None:
    """Mark every row not completed (and, for NaN, the row that detected it) with the failure."""
    last = max(done) if done else None
    for row in rows:
        if row.edits not in done or (include_last and row.edits == last):
            row.status = status


def _probe(
    model: Any, tok: Any, backbone: Backbone, settings: CompareSettings, one_sample: bool = False
) -> ProbeResult:
    if not settings.classification_records or backbone.load_image is None:
        return ProbeResult(math.nan, 0, True)
    batch_size = 1 if one_sample else settings.probe_batch_size
    return classification_accuracy(model, tok, settings.classification_records, backbone.load_image, batch_size)


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def compare(
    methods: list[MethodRun],
    backbone: Backbone,
    settings: CompareSettings,
    threads: int | None = None,
    progress: bool = True,
    on_method_done: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """Run every method on the same edit sequence; returns all rows, method by method (see module docstring).

    ``on_method_done(rows_so_far)`` is called after each method, so a long run can write its table as it goes.
    """
    rows: list[Row] = []
    with _threads(threads):
        for method in methods:
            LOG.info("comparing %s at %s edits", method.name, settings.edits)
            if settings.seed is not None:  # a method's rows never depend on which methods ran before it
                seed_all(settings.seed)
            rows.extend(run_method(method, backbone, settings, progress=progress))
            if on_method_done is not None:
                on_method_done(list(rows))
    return rows
