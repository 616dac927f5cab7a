"""Checks on everything a user hands the editor, before any of it reaches EasyEdit or the expert library.

Bad input must never change state: each public entry (the MMEdit file loader, ``MultimodalEditor.edit`` and
``edit_dataset``, the registered editing entry, the trainer and ``train_archive``, the comparison, the command line)
checks its whole input first and raises one error that says what is wrong and where (file or source, record or
request index, field); only then does anything get edited or trained. No record is dropped: records in, records used
(or an error).

EasyEdit's own loaders fail differently: ``VQADataset``/``CaptionDataset`` skip a record with an empty ``alt``
silently (the edit count shrinks without a word), fail with a bare ``KeyError`` on a missing field, and with a PIL
traceback that does not say which record on a missing or corrupt image; ``MultimodalEditor`` opens images without
saying which argument named them; a prompt longer than the language model's positions fails deep inside the model
(or is cut, and the answer tokens with it); a NaN in an image tensor flows into the model and, for an editor that
stores what it computes, into its memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from ..backbones import adapter_for

LOG = logging.getLogger(__name__)

# The MMEdit record (E-VQA / E-IC; VLKEB adds fields): text fields, then image fields with their hparams root.
TEXT_FIELDS = ("src", "pred", "alt", "rephrase", "loc", "loc_ans", "m_loc_q", "m_loc_a")
IMAGE_FIELDS = {"image": "coco_image", "image_rephrase": "rephrase_image", "m_loc": "coco_image"}
RECORD_FIELDS = (*TEXT_FIELDS, *IMAGE_FIELDS)

# EasyEdit's multimodal request (``MultimodalEditor._prepare_requests``, the datasets' items): text and image keys.
REQUEST_TEXT = ("prompt", "target", "rephrase_prompt", "locality_prompt", "locality_ground_truth",
                "multimodal_locality_prompt", "multimodal_locality_ground_truth")  # fmt: skip
REQUEST_IMAGES = ("image", "image_rephrase", "multimodal_locality_image")
REQUIRED_REQUEST = ("prompt", "target")


# ----------------------------------------------------------------------------------------- images
def check_image_file(path: Path, where: str) -> None:
    """Raise ``ValueError`` starting with ``where`` unless ``path`` is an image file that decodes completely."""
    try:
        exists = path.is_file()
    except (OSError, ValueError):  # a name the file system cannot hold
        exists = False
    if not exists:
        raise ValueError(f"{where}: image file {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()  # decodes the pixels; `verify()` alone misses truncated data
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{where}: image file {path} is corrupt or not an image ({error})") from None


# ----------------------------------------------------------------------------------------- MMEdit files
def validate_records(
    records: object,
    image_root: str | Path,
    rephrase_root: str | Path | None = None,
    source: str = "records",
    unique_edits: bool = True,
) -> int:
    """Check every record of an MMEdit list; returns the number of records.

    Args:
        records: the parsed JSON (must be a list of objects).
        image_root: the hparams' ``coco_image`` (root of ``image`` and ``m_loc``).
        rephrase_root: the hparams' ``rephrase_image`` (root of ``image_rephrase``); defaults to image_root.
        source: named in error messages (the file path).
        unique_edits: refuse two records that edit one image with one question: in one sequence of edits they
            contradict each other. Training data may repeat them (False).

    Raises:
        TypeError: the data is not a list of objects, or a field has the wrong type.
        ValueError: a field is missing, a text field (``alt`` above all) is empty, an image file is missing or
            cannot be decoded, or two records edit the same image with the same question.
    """
    roots = {"coco_image": Path(image_root), "rephrase_image": Path(rephrase_root or image_root)}
    if not isinstance(records, list):
        raise TypeError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    seen: dict[tuple[str, str], int] = {}
    checked: set[Path] = set()  # m_loc images recur across records; decode each file once
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise TypeError(f"{source}: record {index} is a {type(record).__name__}, expected an object")
        for field in RECORD_FIELDS:
            if field not in record:
                raise ValueError(f"{source}: record {index} has no field {field!r}")
        for field in TEXT_FIELDS:
            check_text(record[field], f"{source}: record {index}, field {field!r}")
        for field, root in IMAGE_FIELDS.items():
            value = record[field]
            if not isinstance(value, str):
                raise TypeError(f"{source}: record {index}, field {field!r}: expected an image path, got {value!r}")
            if not value.strip():
                raise ValueError(f"{source}: record {index}, field {field!r} is empty")
            path = roots[root] / value
            if path not in checked:
                check_image_file(path, f"{source}: record {index}, field {field!r}")
                checked.add(path)
        kind = record.get("kind", record["src"])
        if not isinstance(kind, str):
            raise TypeError(f"{source}: record {index}, field 'kind': expected a string, got {kind!r}")
        # Two edits of one image with one question (same `src`, or same kind when recorded) contradict each other.
        key = (record["image"], kind)
        if unique_edits and key in seen:
            raise ValueError(
                f"{source}: record {index}, field 'image': edits the same image and question as record {seen[key]}"
            )
        seen[key] = index
    return len(records)


def image_roots(hparams: Any) -> tuple[str, str | None]:
    """The image folders an EasyEdit dataset built with ``hparams`` reads MMEdit records under (``coco_image``,
    ``rephrase_image``), for ``validate_file``."""
    return getattr(hparams, "coco_image", "."), getattr(hparams, "rephrase_image", None)


def validate_file(
    path: str | Path, image_root: str | Path, rephrase_root: str | Path | None = None, unique_edits: bool = True
) -> int:
    """Validate an MMEdit JSON file (see ``validate_records``); returns the number of records."""
    path = Path(path)
    try:
        records = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{path}: annotation file does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, not an annotation file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    count = validate_records(records, image_root, rephrase_root, source=str(path), unique_edits=unique_edits)
    LOG.debug("validated %d records in %s", count, path)
    return count


def validate_dataset(dataset: Any, source: str, unique_edits: bool = True) -> int | None:
    """Check the MMEdit records an EasyEdit dataset (``VQADataset``, ``CaptionDataset``) was built from; returns their
    number, or None for a dataset that keeps no records (a list of request dicts: ``validate_requests`` checks those).

    EasyEdit's datasets keep the file's records as ``annotation`` and their image folders as ``vis_root`` /
    ``rephrase_root``, but skip a record with an empty field without a word; this names it instead.

    Raises:
        TypeError, ValueError: as ``validate_records``, naming ``source``, the record's index and the field.
    """
    records = getattr(dataset, "annotation", None)
    if records is None:
        return None
    return validate_records(records, dataset.vis_root, getattr(dataset, "rephrase_root", None), source, unique_edits)


def check_text(value: object, where: str) -> str:
    """A non-empty string, or ``TypeError``/``ValueError`` starting with ``where``."""
    if not isinstance(value, str):
        raise TypeError(f"{where}: expected a string, got {type(value).__name__} {value!r:.80}")
    if not value.strip():
        raise ValueError(f"{where} is empty")
    return value


# ----------------------------------------------------------------------------------------- editor arguments
def validate_edit_arguments(
    prompts: Any,
    targets: Any,
    image: Any,
    rephrase_prompts: Any = None,
    rephrase_image: Any = None,
    locality_inputs: Any = None,
    image_root: str | Path = ".",
    rephrase_root: str | Path | None = None,
    source: str = "MultimodalEditor.edit",
) -> None:
    """Check ``MultimodalEditor.edit``'s arguments (EasyEdit main's signature) before any image is opened or edit made.

    Prompts, targets and rephrases are non-empty strings, one per edit; images are paths (relative to
    ``image_root``, as EasyEdit joins them) of files that decode; locality inputs have EasyEdit's shape
    (``{'text': {'prompt', 'ground_truth'}, 'vision': {'prompt', 'ground_truth', 'image'}}``), one per edit.

    Raises:
        TypeError, ValueError: naming the argument and the edit index.
    """
    prompts = _as_list(prompts, "prompts", source)
    targets = _as_list(targets, "targets", source)
    image = _as_list(image, "image", source)
    n = len(prompts)
    if n == 0:
        raise ValueError(f"{source}: no edits (prompts is empty)")
    _check_strings(prompts, "prompts", n, source)
    _check_strings(targets, "targets", n, source)
    _check_paths(image, "image", n, Path(image_root), source)
    if rephrase_prompts is not None:
        _check_strings(_as_list(rephrase_prompts, "rephrase_prompts", source), "rephrase_prompts", n, source)
    if rephrase_image is not None:
        paths = _as_list(rephrase_image, "rephrase_image", source)
        _check_paths(paths, "rephrase_image", n, Path(rephrase_root or image_root), source)
    if locality_inputs is None:
        return
    if not isinstance(locality_inputs, dict) or not set(locality_inputs) <= {"text", "vision"}:
        raise TypeError(f"{source}: locality_inputs must be a dict with keys 'text' and/or 'vision'")
    for part, keys in (("text", ("prompt", "ground_truth")), ("vision", ("prompt", "ground_truth", "image"))):
        if part not in locality_inputs:
            continue
        inputs = locality_inputs[part]
        if not isinstance(inputs, dict) or set(keys) - set(inputs):
            raise TypeError(f"{source}: locality_inputs[{part!r}] must be a dict with keys {', '.join(keys)}")
        for key in keys:
            name = f"locality_inputs[{part!r}][{key!r}]"
            if isinstance(inputs[key], str):  # the wheel's editor counts its characters as edits
                raise TypeError(f"{source}: {name} must be a list with one entry per edit, got the string "
                                f"{inputs[key]!r:.60}")  # fmt: skip
            values = _as_list(inputs[key], name, source)
            if key == "image":
                _check_paths(values, name, n, Path(image_root), source)
            else:
                _check_strings(values, name, n, source)


def _as_list(value: Any, name: str, source: str) -> list:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"{source}: {name} must be a string or a list of strings, got {type(value).__name__}")


def _check_strings(values: list, name: str, n: int, source: str) -> None:
    if len(values) != n:
        raise ValueError(f"{source}: {name} has {len(values)} entries for {n} edits")
    for i, value in enumerate(values):
        check_text(value, f"{source}: {name}[{i}]")


def _check_paths(values: list, name: str, n: int, root: Path, source: str) -> None:
    if len(values) != n:
        raise ValueError(f"{source}: {name} has {len(values)} entries for {n} edits")
    for i, value in enumerate(values):
        check_image_file(root / check_text(value, f"{source}: {name}[{i}]"), f"{source}: {name}[{i}]")


# ----------------------------------------------------------------------------------------- requests
def validate_requests(requests: Sequence[Any], source: str = "requests", image_tensors: bool = True) -> None:
    """Check EasyEdit multimodal requests (dicts of ``prompt``, ``target``, ``image`` tensor, ...) before editing.

    Text fields are non-empty strings (``prompt`` and ``target`` required); image fields are floating tensors of
    shape ``(C, H, W)`` or ``(1, C, H, W)`` whose every value is finite. ``image_tensors=False`` leaves the images
    to the model's processor (EasyEdit main's chat VLMs carry PIL images).

    Raises:
        TypeError, ValueError: naming the request index and the field.
    """
    if not isinstance(requests, (list, tuple)):
        raise TypeError(f"{source}: expected a list of request dicts, got {type(requests).__name__}")
    for index, request in enumerate(requests):
        where = f"{source}: request {index}"
        if not isinstance(request, dict):
            raise TypeError(f"{where} is a {type(request).__name__}, expected a dict")
        for field in REQUIRED_REQUEST:
            if field not in request:
                raise ValueError(f"{where} has no field {field!r}")
        for field in REQUEST_TEXT:
            if field in request:
                check_text(request[field], f"{where}, field {field!r}")
        for field in REQUEST_IMAGES if image_tensors else ():
            if request.get(field) is not None:
                check_image_tensor(request[field], f"{where}, field {field!r}")


def check_image_tensor(value: object, where: str) -> None:
    """A finite floating image tensor ``(C, H, W)`` or ``(1, C, H, W)``, or an error starting with ``where``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: expected an image tensor, got {type(value).__name__}")
    if not value.is_floating_point() or value.dim() not in (3, 4) or (value.dim() == 4 and value.shape[0] != 1):
        raise ValueError(f"{where}: expected a floating (C, H, W) image tensor, got {value.dtype} {list(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{where}: the image tensor is empty {tuple(value.shape)}")
    bad = (~torch.isfinite(value)).sum().item()
    if bad:
        raise ValueError(f"{where}: the image tensor holds {bad} non-finite value(s) (NaN or inf)")


# ----------------------------------------------------------------------------------------- context length
def text_token_limit(model: Any) -> int | None:
    """How many text tokens the backbone's language model can read next to its image tokens (None: unknown).

    The language model's positions (``max_position_embeddings``) less the image tokens placed before the text:
    BLIP-2's and MiniGPT-4's Q-Former query tokens, LLaVA's patch tokens.
    """
    try:
        language_model = adapter_for(model).language_model(model)
    except (NotImplementedError, AttributeError):  # a family LiveEdit has no adapter for: not checked
        return None
    positions = getattr(getattr(language_model, "config", None), "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    query_tokens = getattr(model, "query_tokens", None)
    image_tokens = query_tokens.shape[1] if isinstance(query_tokens, torch.Tensor) else 0
    image_tokens = getattr(model, "num_image_tokens", image_tokens)
    return positions - int(image_tokens)


def check_context(requests: Sequence[dict], tok: Any, limit: int | None, source: str = "requests") -> None:
    """Every text a request makes the model read (prompt + target, rephrase + target, ...) fits in ``limit`` tokens.

    Raises:
        ValueError: naming the request index, the field and both lengths.
    """
    if limit is None:
        return
    tok = getattr(tok, "tokenizer", tok)  # a chat VLM's processor (EasyEdit main passes it as tok) reads text by it
    pairs = (("prompt", "target"), ("rephrase_prompt", "target"), ("locality_prompt", "locality_ground_truth"),
             ("multimodal_locality_prompt", "multimodal_locality_ground_truth"))  # fmt: skip
    for index, request in enumerate(requests):
        for prompt, answer in pairs:
            if prompt in request and answer in request:
                text = f"{request[prompt]} {request[answer]}"
                length = len(tok(text, add_special_tokens=True).input_ids)
                if length > limit:
                    raise ValueError(
                        f"{source}: request {index}, field {prompt!r}: {prompt} + {answer} is {length} tokens, the "
                        f"language model reads at most {limit} next to its image tokens"
                    )
