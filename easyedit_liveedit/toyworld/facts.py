"""What both worlds' models know without an image: number words and text-only arithmetic (T-Locality).

Every sum of two digits in four phrasings; the answer is a number word. ``loc`` questions are drawn from these
facts, pretraining teaches all of them in every phrasing (so a paraphrase is a real test), and each world's
question kinds (``digits.facts``, ``scenes.facts``) answer with these number words.
"""

from __future__ import annotations

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen"
).split()
DIGIT_WORDS = NUMBER_WORDS[:10]

# Sums of two digits, four phrasings each; answers are number words.
ARITHMETIC_TEMPLATES = (
    "what is {a} plus {b}?",
    "how much is {a} plus {b}?",
    "{a} plus {b} makes what?",
    "what do you get when you add {a} and {b}?",
)


def arithmetic(a: int, b: int, template: int) -> tuple[str, str]:
    """The question ``a + b`` in phrasing ``template`` and its answer."""
    question = ARITHMETIC_TEMPLATES[template].format(a=DIGIT_WORDS[a], b=DIGIT_WORDS[b])
    return question, NUMBER_WORDS[a + b]


def text_facts() -> list[dict]:
    """Every text-only fact in every phrasing, in a fixed order: ``question``, ``answer``, ``a``, ``b``, ``template``.

    The ``text_facts`` split of both worlds, their pretraining's text examples and part of their tokenizers' corpus.
    """
    return [
        {"question": q, "answer": answer, "a": a, "b": b, "template": t}
        for a in range(10)
        for b in range(10)
        for t in range(len(ARITHMETIC_TEMPLATES))
        for q, answer in [arithmetic(a, b, t)]
    ]


def text_lines() -> list[str]:
    """Every text-only fact as one line "question answer" (part of both worlds' tokenizer corpus)."""
    return [f"{fact['question']} {fact['answer']}" for fact in text_facts()]
