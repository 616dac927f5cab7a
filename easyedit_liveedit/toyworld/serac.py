"""SERAC's scope classifier for the toy world: a tiny, randomly initialised BERT that SERAC's own meta-training
trains.

EasyEdit's SERAC (``SERAC_MULTI``) loads two extra networks by name: a scope classifier (``cls_name``, a
BERT-style encoder, ``distilbert-base-cased`` from the model hub in EasyEdit's YAMLs) and a counterfactual
language model (``small_name``, ``opt-125m`` beside BLIP-2-OPT-2.7B). Offline, on the toy world:

* the counterfactual model is the toy backbone's own OPT (``<world>/opt``): the same family and tokenizer, as
  ``opt-125m`` is to OPT-2.7B, only not smaller than the backbone's LM (the toy OPT is already 0.1M parameters);
* the scope classifier is written here: a 2-layer BERT of hidden size 64 with the Q-Former's WordPiece
  vocabulary (a real BERT vocabulary built from the toy world's corpus, so every record tokenises without
  unknown words). It starts random, unlike distilbert, so everything it knows comes from SERAC's meta-training.

The folder name must contain ``bert``: EasyEdit reads the ``[CLS]`` state only for a ``cls_name`` containing
"bert" (otherwise it asks for a pooler output that it has just removed).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

LOG = logging.getLogger(__name__)

FOLDER = "serac-scope-bert"  # under the world's root; "bert" in the name selects EasyEdit's [CLS] embedding
HIDDEN = 64  # the toy OPT's width; distilbert's is 768 beside OPT-2.7B's 2560
LAYERS = 2
HEADS = 4
SEED = 0


def write_scope_classifier(vocab: Path, folder: Path, max_positions: int = 128) -> Path:
    """Write a seeded, randomly initialised ``BertModel`` and its tokenizer to ``folder`` (if it is missing).

    Args:
        vocab: a WordPiece ``vocab.txt`` (the toy world's Q-Former vocabulary).
        folder: where ``AutoModel`` / ``AutoTokenizer.from_pretrained`` will find them.
        max_positions: longest classifier input (a cached edit plus a query) in tokens.

    Returns:
        ``folder``. The same seed and vocabulary always give the same weights; an existing folder is kept.
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    work = folder.with_name(f"{folder.name}.building-{os.getpid()}")  # never leave a half-written folder
    shutil.rmtree(work, ignore_errors=True)
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(SEED)
    try:
        model = BertModel(config)
    finally:
        torch.random.set_rng_state(generator_state)  # the caller's random stream is left as it was
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(work, folder)
    LOG.info("SERAC scope classifier (%d parameters) written to %s", model.num_parameters(), folder)
    return folder
