"""The toy world's two tokenizers, trained with the ``tokenizers`` library on the toy world's own text.

* OPT side: a byte-level BPE saved as ``vocab.json`` + ``merges.txt``, so ``GPT2Tokenizer.from_pretrained``
  (what EasyEdit's ``Blip2OPT`` and datasets load) works. Merges never cross a space: every space is its own
  token. EasyEdit counts ``prompts_len`` on the prompt tokenised alone, and its VQA template ends with a
  space; with GPT-2's usual merges that space fuses with the answer's first word and the mask then hides the
  answer. With spaces kept apart the prompt's tokens are a prefix of prompt+answer's tokens. No BOS token is
  added (EasyEdit's VQA labels come from ``tok.encode(target)``; a BOS there misaligns its token accuracy);
  "\\n" encodes (``Blip2OPT`` reads its id as end-of-sequence); padding is on the right.
* Q-Former side: a WordPiece ``vocab.txt`` (``BertTokenizer.from_pretrained`` in ``Blip2Base.init_tokenizer``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

LOG = logging.getLogger(__name__)

OPT_SPECIAL = {"bos": "</s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"}
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_opt_tokenizer(corpus: list[str], folder: Path, vocab_size: int = 1000) -> None:
    """Train the byte-level BPE and save it in the GPT-2 format ``GPT2Tokenizer`` reads.

    Args:
        corpus: every text the toy world produces.
        folder: where ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` are written.
        vocab_size: upper bound; the toy world's words need far fewer, so every word becomes one token.
    """
    tok = Tokenizer(models.BPE())
    # A space is isolated before byte-level mapping, so no merge ever contains "Ġ" (see module docstring).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", OPT_SPECIAL["pad"], OPT_SPECIAL["eos"], OPT_SPECIAL["unk"]],  # OPT's ids 0-3
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))  # vocab.json + merges.txt
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": OPT_SPECIAL["bos"],
        "eos_token": OPT_SPECIAL["eos"],
        "unk_token": OPT_SPECIAL["unk"],
        "pad_token": OPT_SPECIAL["pad"],
        "padding_side": "right",
        "model_max_length": 128,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {f"{k}_token": v for k, v in OPT_SPECIAL.items()}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    LOG.info("OPT tokenizer: %d tokens in %s", tok.get_vocab_size(), folder)


def train_qformer_vocab(corpus: list[str], folder: Path, vocab_size: int = 1000) -> int:
    """Train a lower-cased WordPiece vocabulary and write ``vocab.txt``; returns its size."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIAL, show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    vocab = sorted(tok.get_vocab().items(), key=lambda item: item[1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab))
    return len(vocab)


def write_word_vocab(corpus: list[str], folder: Path) -> int:
    """Write a WordPiece ``vocab.txt`` of BERT's special tokens and every whole word of ``corpus``; returns its size.

    Words are split and lower-cased as ``BertTokenizer`` splits them, so every string of the corpus tokenises
    without unknown words. Unlike ``train_qformer_vocab`` the result is deterministic: the WordPiece trainer
    breaks ties differently from run to run (six runs on the scenes world's corpus gave six vocabularies of
    346 or 347 tokens), and the vocabulary's size sets how much of the random stream the Q-Former's
    initialisation consumes, so a varying size made two builds of one configuration differ.
    """
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = {word for line in corpus for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line))}
    vocab = BERT_SPECIAL + sorted(words - set(BERT_SPECIAL))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab))
    return len(vocab)


def load_opt_tokenizer(folder: Path):
    """Load the OPT-side tokenizer the way EasyEdit's datasets do (``GPT2Tokenizer``)."""
    from transformers import GPT2Tokenizer

    return GPT2Tokenizer.from_pretrained(str(folder))
