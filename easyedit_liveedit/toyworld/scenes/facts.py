"""What the scenes world's model knows: twelve question kinds about a 2x2 scene and captions (the text-only
arithmetic both worlds share is in ``toyworld/facts.py``).

Every answer is a pure function of the scene's content (``subjects.Scene``) and the question's parameter (a
cell, or none for the paper), so the truth is never in doubt and both renderings of a subject share it. Each
kind has four phrasings (T-Generality rephrases with another one, same parameter).

Every kind but the paper reads ONE cell, named by its position or by its relation to a named position (beside
it, in its column, diagonally opposite), and answers a function of that cell's digit or ink. Why no kind
compounds readings or searches the scene by content: a cell is read right ~97% of the time, so "what is the sum
of the four digits?" would be right ~88% of the time, below the world's >= 90% per kind; and kinds that find a
cell by its ink or digit ("where is the red digit?", "what colour is the seven?", "how many red digits?",
"is the top left digit red?") were measured on a dev split at 0.45-0.82 after the whole pretraining budget
(the small LM learns lookups by position quickly, by content or by comparison not), see ``scenes.pretrain``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..facts import DIGIT_WORDS, NUMBER_WORDS, text_lines
from .subjects import INK_NAMES, PAPER_NAMES, POSITIONS, Scene

Param = Any  # a cell index 0-3, or None (the paper)


def number_word(n: int) -> str:
    """0-29 in words ("twenty one"): the answers of the arithmetic kinds."""
    if not 0 <= n < 30:
        raise ValueError(f"number_word: expected 0-29, got {n}")
    if n < 20:
        return (*NUMBER_WORDS, "nineteen")[n]
    return "twenty" + (f" {NUMBER_WORDS[n - 20]}" if n > 20 else "")


@dataclass(frozen=True)
class SceneKind:
    """A kind of question about a scene: phrasings with a ``{pos}`` slot, answer space, parameters, answer."""

    name: str
    templates: tuple[str, ...]  # paraphrases; ``{pos}`` is filled with the named cell's position
    answers: tuple[str, ...]  # the answer space a counterfactual ``alt`` is drawn from
    answer: Callable[[Scene, Param], str]
    # The cell whose content answers the question, given the named one (None for the paper). Pretraining points
    # one attention head of the LM at its image token (``scenes/pretrain.py``).
    cell: Callable[[Scene, Param], int | None]
    every_param: tuple[Param, ...] = (0, 1, 2, 3)
    # How often pretraining asks this kind, relative to the others (chosen on a dev split of train scans):
    # - the two ink kinds 3x: nine kinds read a digit and only they read an ink; asked as often as the others,
    #   the LM read inks at chance for 4,000 of 6,000 joint steps (0.79 at the end), at 3x it read them at 1.00;
    # - the three kinds that read a cell other than the named one 2x: they were the slowest to learn (0.84-0.97
    #   after 6,000 joint steps, still rising).
    pretraining_weight: float = 1.0

    def __post_init__(self) -> None:
        if len(self.templates) < 4:
            raise ValueError(f"scene kind {self.name!r}: needs at least four phrasings")

    def params(self, scene: Scene) -> list[Param]:
        """Parameters for which the question has one true answer (every cell, or None for the paper)."""
        return list(self.every_param)

    def question(self, template: int, param: Param) -> str:
        """The question in phrasing ``template`` about the named cell."""
        slots = {} if param is None else {"pos": POSITIONS[param]}
        return self.templates[template].format(**slots)


# Relations between cells 0-3 (top left, top right, bottom left, bottom right): XOR of the index bits.
BESIDE, ACROSS, OPPOSITE = 1, 2, 3  # same row, same column, diagonal


def _digit_kind(name: str, templates: tuple[str, ...], answers, value: Callable[[int], str], relation: int = 0):
    """A question about the digit of the named cell (``relation`` 0) or of a cell related to it."""
    return SceneKind(
        name,
        templates,
        tuple(answers),
        lambda s, c: value(s.digits[c ^ relation]),
        lambda s, c: c ^ relation,
        pretraining_weight=2.0 if relation else 1.0,
    )


def _ink_kind(name: str, templates: tuple[str, ...], relation: int = 0) -> SceneKind:
    """A question about the ink of the named cell (``relation`` 0) or of a cell related to it."""
    return SceneKind(
        name,
        templates,
        INK_NAMES,
        lambda s, c: INK_NAMES[s.inks[c ^ relation]],
        lambda s, c: c ^ relation,
        pretraining_weight=3.0,
    )


def _digit_word(d: int) -> str:
    return DIGIT_WORDS[d]


SCENE_KINDS: tuple[SceneKind, ...] = (
    _digit_kind(
        "digit",
        (
            "what digit is in the {pos}?",
            "which digit is written in the {pos}?",
            "what number is shown in the {pos}?",
            "name the digit in the {pos}.",
        ),
        DIGIT_WORDS,
        _digit_word,
    ),
    _digit_kind(
        "parity",
        (
            "is the digit in the {pos} odd or even?",
            "is the {pos} digit even or odd?",
            "what is the parity of the digit in the {pos}?",
            "is the number in the {pos} an odd or an even number?",
        ),
        ("even", "odd"),
        lambda d: "even" if d % 2 == 0 else "odd",
    ),
    _digit_kind(
        "above_four",
        (
            "is the digit in the {pos} greater than four?",
            "is the {pos} digit bigger than four?",
            "is the number in the {pos} above four?",
            "is the {pos} number larger than four?",
        ),
        ("yes", "no"),
        lambda d: "yes" if d > 4 else "no",
    ),
    _digit_kind(
        "successor",
        (
            "what number comes after the digit in the {pos}?",
            "which number follows the {pos} digit?",
            "what is the next number after the digit in the {pos}?",
            "what do you get by counting one past the {pos} digit?",
        ),
        [number_word(n) for n in range(1, 11)],
        lambda d: number_word(d + 1),
    ),
    _digit_kind(
        "double",
        (
            "what is twice the digit in the {pos}?",
            "what do you get when you double the {pos} digit?",
            "what is the digit in the {pos} times two?",
            "how much is two times the {pos} digit?",
        ),
        [number_word(2 * d) for d in range(10)],
        lambda d: number_word(2 * d),
    ),
    _digit_kind(
        "triple",
        (
            "what is three times the digit in the {pos}?",
            "what do you get when you triple the {pos} digit?",
            "what is the digit in the {pos} times three?",
            "how much is thrice the {pos} digit?",
        ),
        [number_word(3 * d) for d in range(10)],
        lambda d: number_word(3 * d),
    ),
    _digit_kind(
        "digit_beside",
        (
            "what digit is next to the one in the {pos}?",
            "which digit sits beside the {pos} digit?",
            "what number is in the same row as the {pos} digit?",
            "name the digit beside the one in the {pos}.",
        ),
        DIGIT_WORDS,
        _digit_word,
        BESIDE,
    ),
    _digit_kind(
        "digit_across",
        (
            "what digit is in the same column as the {pos} digit?",
            "which digit is above or below the one in the {pos}?",
            "what number shares a column with the {pos} digit?",
            "name the digit in the column of the {pos} one.",
        ),
        DIGIT_WORDS,
        _digit_word,
        ACROSS,
    ),
    _digit_kind(
        "digit_opposite",
        (
            "what digit is diagonally opposite the {pos} one?",
            "which digit is in the corner opposite the {pos}?",
            "what number is across the diagonal from the {pos} digit?",
            "name the digit opposite the one in the {pos}.",
        ),
        DIGIT_WORDS,
        _digit_word,
        OPPOSITE,
    ),
    _ink_kind(
        "ink",
        (
            "what colour is the digit in the {pos}?",
            "in which colour is the {pos} digit written?",
            "what is the colour of the {pos} digit?",
            "which colour does the digit in the {pos} have?",
        ),
    ),
    _ink_kind(
        "ink_beside",
        (
            "what colour is the digit next to the one in the {pos}?",
            "in which colour is the digit beside the {pos} one written?",
            "what is the colour of the digit in the same row as the {pos} one?",
            "which colour does the digit beside the {pos} digit have?",
        ),
        BESIDE,
    ),
    SceneKind(
        "paper",
        (
            "what colour is the background?",
            "which colour is the page behind the digits?",
            "what is the background colour?",
            "on what colour are the digits written?",
        ),
        PAPER_NAMES,
        lambda s, _: PAPER_NAMES[s.paper],
        lambda s, _: None,
        (None,),
    ),
)
KIND_BY_NAME = {kind.name: kind for kind in SCENE_KINDS}

# E-IC: a caption prompt is completed by the scene's caption (CaptionDataset joins `src` and `alt` with a space).
CAPTION_PROMPTS = ("a picture of", "this image shows", "the photo contains", "here we see")


def caption(scene: Scene) -> str:
    """The caption of a scene: every cell's ink and digit in reading order, then the paper."""
    cells = [f"{INK_NAMES[scene.inks[c]]} {DIGIT_WORDS[scene.digits[c]]}" for c in range(4)]
    return f"{cells[0]} and {cells[1]} above {cells[2]} and {cells[3]} on {PAPER_NAMES[scene.paper]}"


# EMT-style classification: the prompt lists every class name; the class is the top left digit.
CLASSIFICATION_PROMPTS = (
    "which of " + ", ".join(DIGIT_WORDS[:-1]) + " or " + DIGIT_WORDS[-1] + " is in the top left?",
    "classify the top left digit as one of " + ", ".join(DIGIT_WORDS) + ".",
)
CLASSIFICATION_CELL = 0


def answer_space() -> set[str]:
    """Every answer any kind can give (what the >= 30 distinct answers are counted over)."""
    return {answer for kind in SCENE_KINDS for answer in kind.answers}


def all_text() -> list[str]:
    """Every string the scenes world can produce (the tokenizers' training corpus)."""
    example = Scene((0, 1, 2, 3), (0, 1, 2, 3), 0)
    lines = []
    for kind in SCENE_KINDS:
        lines += list(kind.answers)
        for template in range(len(kind.templates)):
            for param in kind.every_param:
                question = kind.question(template, param)
                lines += [question, f"Question: {question} Short answer: "]
    lines += list(CAPTION_PROMPTS) + [caption(example)] + list(CLASSIFICATION_PROMPTS)
    lines += text_lines()
    lines += [" ".join(NUMBER_WORDS), " ".join(INK_NAMES), " ".join(PAPER_NAMES), " ".join(POSITIONS)]
    lines += [number_word(n) for n in range(30)]
    return lines


__all__ = [
    "CAPTION_PROMPTS",
    "CLASSIFICATION_CELL",
    "CLASSIFICATION_PROMPTS",
    "KIND_BY_NAME",
    "SCENE_KINDS",
    "SceneKind",
    "all_text",
    "answer_space",
    "caption",
    "number_word",
]
