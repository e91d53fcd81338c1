"""Math word problems around the exact n-ary addition generator.

The math domain of the SoftSRV benchmark ("SoftSRV: Learn to Generate
Targeted Synthetic Data", arXiv 2410.16534, uses GSM8K; no such data set
ships offline). Each problem takes the operands and exact sum of one
`keras_gr.data.addition_examples` row and writes them as a short story with
a question and a final line `Answer: <sum>`, e.g.

    Ann has 26 apples. Ann gets 30 more apples. Then Ann gets 4 more
    apples. How many apples does Ann have now? Answer: 60

Because every quantity in the question is an addend, any text in this
format (real or generated) can be checked exactly: `parse_math_problem`
reads the numbers of the question and the stated answer, and
`math_answer_correct` compares the answer with their sum.
"""

import re
from collections.abc import Sequence

import numpy as np

from keras_gr._validation import check_integer
from keras_gr.data.addition import addition_examples

NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana")
ITEMS = ("apples", "books", "coins", "stamps", "shells", "pens", "cards")
_ANSWER = re.compile(r"Answer:\s*(-?\d+)")
_NUMBER = re.compile(r"\d+")


def _story(name, item, operands):
    parts = [f"{name} has {operands[0]} {item}."]
    for i, value in enumerate(operands[1:]):
        lead = "Then " if i else ""
        parts.append(f"{lead}{name} gets {value} more {item}.")
    parts.append(f"How many {item} does {name} have now?")
    return " ".join(parts)


def math_word_problems(
    num_examples: int,
    num_operands: int | Sequence[int] = (2, 3),
    digits: int = 2,
    seed: int = 0,
) -> dict:
    """Seeded word problems with exact answers.

    Args:
        num_examples: number of problems (>= 1).
        num_operands: addends per problem, an int or a list to draw from.
            Defaults to `(2, 3)`.
        digits: largest operand width. Defaults to `2`.
        seed: seed of the operands, names and items. Defaults to `0`.

    Returns:
        A dict with `texts` (question + `" Answer: <sum>"`), `questions`,
        `answers` (int64) and `operands` (lists of ints).

    Example:

    >>> data = math_word_problems(2, num_operands=2, seed=0)
    >>> all(math_answer_correct(t) for t in data["texts"])
    True
    """
    num_examples = check_integer("num_examples", num_examples)
    digits = check_integer("digits", digits)
    raw = addition_examples(num_examples, num_operands, digits, seed=seed)
    rng = np.random.default_rng(seed + 1)
    questions, texts, operands = [], [], []
    for row in range(num_examples):
        values = [int(v) for v in raw["operands"][row] if v >= 0]
        name = NAMES[rng.integers(len(NAMES))]
        item = ITEMS[rng.integers(len(ITEMS))]
        question = _story(name, item, values)
        questions.append(question)
        texts.append(f"{question} Answer: {int(raw['answers'][row])}")
        operands.append(values)
    return {
        "texts": texts,
        "questions": questions,
        "answers": raw["answers"].astype("int64"),
        "operands": operands,
    }


def parse_math_problem(text: str) -> tuple[list[int], int] | None:
    """`(addends, answer)` of a problem text, or `None` when it has no
    `Answer: <int>` or no number before it.

    Example:

    >>> parse_math_problem("Ann has 12 apples and buys 30. Answer: 42")
    ([12, 30], 42)
    >>> parse_math_problem("No answer here: 7") is None
    True
    """
    match = _ANSWER.search(text)
    if match is None:
        return None
    addends = [int(n) for n in _NUMBER.findall(text[: match.start()])]
    if not addends:
        return None
    return addends, int(match.group(1))


def math_answer_correct(text: str) -> bool:
    """True when `text` states an answer equal to the sum of its addends.

    Example:

    >>> math_answer_correct("Ann has 12 apples and buys 30. Answer: 42")
    True
    >>> math_answer_correct("Ann has 12 apples and buys 30. Answer: 41")
    False
    """
    parsed = parse_math_problem(text)
    return parsed is not None and sum(parsed[0]) == parsed[1]
