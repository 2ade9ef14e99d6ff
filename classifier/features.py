"""Cheap features of a query: n-grams of its text and a handful of numbers about its shape.

One function per view, used by both training and scoring, so the two can never disagree.
Everything here is pure Python on one short string: scoring must stay far below a millisecond.
"""
from __future__ import annotations

import math
import re

WORD = re.compile(r"\w+|[^\w\s]")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
DIGIT = re.compile(r"\d")
CHAR_NGRAMS = (2, 3, 4)

NUMERIC_NAMES = (
    "log_chars", "log_words", "digit_share", "log_numbers", "log_longest_number",
    "log_operators", "log_newlines", "upper_share", "punct_share", "mean_word_len",
)
OPERATORS = set("+-*/^%=<>()[]{}")


def grams(text: str) -> set[str]:
    """Word uni/bi-grams of the text, and char n-grams of its shape (every digit written as 0).

    The shape view lets "41*73" and "12*58" share features: how many digits, which operator,
    rather than which numbers; that is what tells a hard query from an easy one.
    """
    low = text.lower()
    words = WORD.findall(low)
    out = {"w:" + w for w in words}
    out.update("b:" + a + " " + b for a, b in zip(words, words[1:]))
    shape = " " + " ".join(DIGIT.sub("0", low).split()) + " "
    for n in CHAR_NGRAMS:
        out.update("c:" + shape[i:i + n] for i in range(len(shape) - n + 1))
    return out


def numeric(text: str) -> list[float]:
    """Numbers about the query's shape, in NUMERIC_NAMES order."""
    chars = len(text) or 1
    words = text.split()
    numbers = NUMBER.findall(text)
    return [
        math.log1p(len(text)),
        math.log1p(len(words)),
        sum(c.isdigit() for c in text) / chars,
        math.log1p(len(numbers)),
        math.log1p(max((len(n) for n in numbers), default=0)),
        math.log1p(sum(c in OPERATORS for c in text)),
        math.log1p(text.count("\n")),
        sum(c.isupper() for c in text) / chars,
        sum(not c.isalnum() and not c.isspace() for c in text) / chars,
        sum(len(w) for w in words) / (len(words) or 1),
    ]
