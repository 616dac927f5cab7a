"""What the digits world's model knows: question kinds about a digit image and captions (the text-only
arithmetic both worlds share is in ``toyworld/facts.py``).

Every answer is a pure function of a digit label (0-9), so the ground truth is never in doubt, and every question
kind has several phrasings so that a paraphrase (T-Generality) is a real test: the model meets all phrasings in
pretraining, each tied to the same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..facts import DIGIT_WORDS, NUMBER_WORDS, text_lines


@dataclass(frozen=True)
class QuestionKind:
    """A kind of question about a digit image: its phrasings, its answer space and its answer function."""

    name: str
    templates: tuple[str, ...]  # paraphrases of one question; all are asked in pretraining
    answers: tuple[str, ...]  # the answer space a counterfactual `alt` is drawn from
    answer: Callable[[int], str]  # digit label -> correct answer

    def __post_init__(self) -> None:
        if len(self.templates) < 2:
            raise ValueError(f"question kind {self.name!r}: needs at least two phrasings for `rephrase`")
        for digit in range(10):
            if self.answer(digit) not in self.answers:
                raise ValueError(f"question kind {self.name!r}: answer for digit {digit} is outside `answers`")


def _digit(d: int) -> str:
    return DIGIT_WORDS[d]


def _parity(d: int) -> str:
    return "even" if d % 2 == 0 else "odd"


def _successor(d: int) -> str:
    return NUMBER_WORDS[d + 1]


def _above_four(d: int) -> str:
    return "yes" if d > 4 else "no"


def _double(d: int) -> str:
    return NUMBER_WORDS[2 * d]


VQA_KINDS: tuple[QuestionKind, ...] = (
    QuestionKind(
        "digit",
        (
            "what digit is shown in the image?",
            "which digit is written here?",
            "what number does this picture show?",
            "name the digit in the image.",
        ),
        tuple(DIGIT_WORDS),
        _digit,
    ),
    QuestionKind(
        "parity",
        (
            "is the digit odd or even?",
            "is the number in the picture even or odd?",
            "what is the parity of the digit shown?",
            "is this digit an odd or an even number?",
        ),
        ("odd", "even"),
        _parity,
    ),
    QuestionKind(
        "successor",
        (
            "what number comes after the digit shown?",
            "which number follows the digit in the image?",
            "what is the next number after this digit?",
            "what do you get by counting one past the digit in the picture?",
        ),
        tuple(NUMBER_WORDS[1:11]),
        _successor,
    ),
    QuestionKind(
        "above_four",
        (
            "is the digit greater than four?",
            "is the number shown bigger than four?",
            "does the image show a digit above four?",
            "is this digit larger than four?",
        ),
        ("yes", "no"),
        _above_four,
    ),
    QuestionKind(
        "double",
        (
            "what is twice the digit shown?",
            "what do you get when you double the digit in the image?",
            "what is the digit in the picture times two?",
            "how much is two times this digit?",
        ),
        tuple(NUMBER_WORDS[0:19:2]),
        _double,
    ),
)
KIND_BY_NAME = {kind.name: kind for kind in VQA_KINDS}

# E-IC: a caption prompt is completed by the caption (CaptionDataset joins `src` and `alt` with one space).
CAPTION_PROMPTS = (
    "a picture of",
    "this image shows",
    "the photo contains",
    "here we see",
)


def caption(digit: int) -> str:
    """The caption of a digit image."""
    return f"a handwritten {DIGIT_WORDS[digit]}"


# EMT-style classification: the prompt lists every class name, the answer is one of them.
CLASSIFICATION_PROMPTS = (
    "which of " + ", ".join(DIGIT_WORDS[:-1]) + " or " + DIGIT_WORDS[-1] + " is shown in the image?",
    "classify the image as one of " + ", ".join(DIGIT_WORDS) + ".",
)


def all_text() -> list[str]:
    """Every string the digits world can produce (the tokenizers' training corpus)."""
    lines = [t for kind in VQA_KINDS for t in kind.templates]
    lines += [a for kind in VQA_KINDS for a in kind.answers]
    lines += list(CAPTION_PROMPTS) + [caption(d) for d in range(10)] + list(CLASSIFICATION_PROMPTS)
    lines += text_lines()
    lines += [f"Question: {t} Short answer: " for kind in VQA_KINDS for t in kind.templates]
    lines += [" ".join(NUMBER_WORDS)]
    return lines
