"""What the scenes world's model knows: twelve question kinds about a 2x2 scene, captions, and (shared with the
digits world) text-only arithmetic.

Every answer is a pure function of the scene's content (``scenes.Scene``) and the question's parameter (a
cell, an ink or a digit), so the truth is never in doubt and both renderings of a subject share it. Each kind
has four phrasings (T-Generality rephrases with another one, same parameter). The kinds are chosen so that no
answer compounds more than one digit reading: a 2x2 scene read at 97% per cell would answer "what is the sum
of the four digits?" right only ~88% of the time, below the world's >= 90% per kind; questions that need the
whole scene ask about colours, which are read almost perfectly, or locate a digit ("what colour is the
seven?").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .facts import ARITHMETIC_TEMPLATES, DIGIT_WORDS, NUMBER_WORDS, arithmetic
from .scenes import INK_NAMES, PAPER_NAMES, POSITIONS, Scene

Param = Any  # None, a cell index, an ink index, a digit, or (cell, ink)


@dataclass(frozen=True)
class SceneKind:
    """A kind of question about a scene: phrasings with slots, answer space, askable parameters, answer."""

    name: str
    templates: tuple[str, ...]  # paraphrases; ``{pos}``, ``{ink}``, ``{digit}`` are filled from the parameter
    answers: tuple[str, ...]  # the answer space a counterfactual ``alt`` is drawn from
    params: Callable[[Scene], list[Param]]  # parameters for which the question has one true answer
    answer: Callable[[Scene, Param], str]
    slots: Callable[[Param], dict[str, str]]  # parameter -> template slots
    every_param: tuple[Param, ...]  # all parameters the kind can take in any scene (the tokenizer's corpus)
    # The cell the question is about, if one is (found by position, by ink or by digit); None for the paper and
    # for counts. Pretraining points one attention head of the LM at it (scene_pretrain.py).
    cell: Callable[[Scene, Param], int | None] = lambda scene, param: None

    def __post_init__(self) -> None:
        if len(self.templates) < 4:
            raise ValueError(f"scene kind {self.name!r}: needs at least four phrasings")

    def question(self, template: int, param: Param) -> str:
        """The question in phrasing ``template`` with its slots filled."""
        return self.templates[template].format(**self.slots(param))


def _cells(scene: Scene) -> list[Param]:
    return [0, 1, 2, 3]


def _cell_slots(cell: int) -> dict[str, str]:
    return {"pos": POSITIONS[cell]}


def _ink_slots(ink: int) -> dict[str, str]:
    return {"ink": INK_NAMES[ink]}


def _cell_kind(name: str, templates: tuple[str, ...], answers, answer: Callable[[int], str]) -> SceneKind:
    """A question about the digit in one cell (``{pos}``): ``answer`` maps that digit to the answer."""
    return SceneKind(
        name,
        templates,
        tuple(answers),
        _cells,
        lambda s, c: answer(s.digits[c]),
        _cell_slots,
        (0, 1, 2, 3),
        lambda s, c: c,
    )


SCENE_KINDS: tuple[SceneKind, ...] = (
    _cell_kind(
        "digit",
        (
            "what digit is in the {pos}?",
            "which digit is written in the {pos}?",
            "what number is shown in the {pos}?",
            "name the digit in the {pos}.",
        ),
        DIGIT_WORDS,
        lambda d: DIGIT_WORDS[d],
    ),
    _cell_kind(
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
    _cell_kind(
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
    _cell_kind(
        "successor",
        (
            "what number comes after the digit in the {pos}?",
            "which number follows the {pos} digit?",
            "what is the next number after the digit in the {pos}?",
            "what do you get by counting one past the {pos} digit?",
        ),
        NUMBER_WORDS[1:11],
        lambda d: NUMBER_WORDS[d + 1],
    ),
    _cell_kind(
        "double",
        (
            "what is twice the digit in the {pos}?",
            "what do you get when you double the {pos} digit?",
            "what is the digit in the {pos} times two?",
            "how much is two times the {pos} digit?",
        ),
        NUMBER_WORDS[0:19:2],
        lambda d: NUMBER_WORDS[2 * d],
    ),
    SceneKind(
        "ink",
        (
            "what colour is the digit in the {pos}?",
            "in which colour is the {pos} digit written?",
            "what is the colour of the {pos} digit?",
            "which colour does the digit in the {pos} have?",
        ),
        INK_NAMES,
        _cells,
        lambda s, c: INK_NAMES[s.inks[c]],
        _cell_slots,
        (0, 1, 2, 3),
        lambda s, c: c,
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
        lambda s: [None],
        lambda s, _: PAPER_NAMES[s.paper],
        lambda _: {},
        (None,),
    ),
    SceneKind(
        "ink_count",
        (
            "how many {ink} digits are there?",
            "how many digits are written in {ink}?",
            "count the {ink} digits.",
            "what is the number of {ink} digits?",
        ),
        tuple(NUMBER_WORDS[0:5]),
        lambda s: list(range(len(INK_NAMES))),
        lambda s, k: NUMBER_WORDS[s.inks.count(k)],
        _ink_slots,
        tuple(range(len(INK_NAMES))),
    ),
    SceneKind(
        "ink_where",
        (
            "where is the {ink} digit?",
            "in which corner is the {ink} digit?",
            "which corner holds the digit written in {ink}?",
            "where in the picture is the {ink} digit?",
        ),
        POSITIONS,
        lambda s: s.unique_inks(),
        lambda s, k: POSITIONS[s.inks.index(k)],
        _ink_slots,
        tuple(range(len(INK_NAMES))),
        lambda s, k: s.inks.index(k),
    ),
    SceneKind(
        "ink_digit",
        (
            "what digit is written in {ink}?",
            "which digit is {ink}?",
            "what number is drawn in {ink}?",
            "name the {ink} digit.",
        ),
        tuple(DIGIT_WORDS),
        lambda s: s.unique_inks(),
        lambda s, k: DIGIT_WORDS[s.digits[s.inks.index(k)]],
        _ink_slots,
        tuple(range(len(INK_NAMES))),
        lambda s, k: s.inks.index(k),
    ),
    SceneKind(
        "digit_ink",
        (
            "what colour is the {digit}?",
            "in which colour is the {digit} written?",
            "which colour does the {digit} have?",
            "what is the colour of the {digit}?",
        ),
        INK_NAMES,
        lambda s: s.unique_digits(),
        lambda s, d: INK_NAMES[s.inks[s.digits.index(d)]],
        lambda d: {"digit": DIGIT_WORDS[d]},
        tuple(range(10)),
        lambda s, d: s.digits.index(d),
    ),
    SceneKind(
        "is_ink",
        (
            "is the digit in the {pos} {ink}?",
            "is the {pos} digit written in {ink}?",
            "is {ink} the colour of the digit in the {pos}?",
            "does the {pos} digit have the colour {ink}?",
        ),
        ("yes", "no"),
        lambda s: [(c, k) for c in range(4) for k in range(len(INK_NAMES))],
        lambda s, p: "yes" if s.inks[p[0]] == p[1] else "no",
        lambda p: {"pos": POSITIONS[p[0]], "ink": INK_NAMES[p[1]]},
        tuple((c, k) for c in range(4) for k in range(len(INK_NAMES))),
        lambda s, p: p[0],
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
    lines += [" ".join(arithmetic(a, b, t)) for a in range(10) for b in range(10) for t in range(4)]
    lines += [" ".join(NUMBER_WORDS), " ".join(INK_NAMES), " ".join(PAPER_NAMES), " ".join(POSITIONS)]
    return lines


__all__ = [
    "ARITHMETIC_TEMPLATES",
    "CAPTION_PROMPTS",
    "CLASSIFICATION_CELL",
    "CLASSIFICATION_PROMPTS",
    "KIND_BY_NAME",
    "SCENE_KINDS",
    "SceneKind",
    "all_text",
    "answer_space",
    "arithmetic",
    "caption",
]
