"""Cheap features of a query: n-grams of its text and a handful of numbers about its shape.

One function per kind, used by both training and scoring, so the two can never disagree.
Everything here runs on one string per call and must stay far below a millisecond, so the work is
left to C where Python allows it (regexes, set comprehensions, str methods).
"""
from __future__ import annotations

import math
import re

WORD = re.compile(r"\w+|[^\w\s]")
NUMBER = re.compile(r"\d+")
DIGIT = re.compile(r"\d")
UPPER = re.compile(r"[A-Z]")
PUNCT = re.compile(r"[^\w\s]")
OPERATOR = re.compile(r"[-+*/^%=<>()\[\]{}]")
CHAR_NGRAMS = (2, 3, 4)
# n-grams read at most this much of a long text, half from each end: latency stays bounded
MAX_CHARS = 1024
# the numbers read at most this much, half from each end, counts scaled to the whole length: a 4 MB prompt
# costs what 64 KB does (a whole read held the interpreter lock ~250 ms, stalling the gateway's event loop)
MAX_NUMERIC_CHARS = 64 * 1024

# the views of grams(), in order; a weight's name is "<view>:<gram>"
VIEWS = ("w", "b", "s", "c")
NUMERIC_NAMES = (
    "log_chars", "log_words", "digit_share", "log_numbers", "log_longest_number",
    "log_operators", "log_newlines", "upper_share", "punct_share", "mean_word_len",
)


def grams(text: str, chars: bool = True) -> tuple[set[str], set[str], set[str], set[str]]:
    """Per view: words, word bigrams, the first word crossed with a length bucket, and char n-grams
    of the text's shape (lower case, every digit written as 0, runs of blanks as one space).

    The shape view lets "41 73" and "12 58" share features: how many digits rather than which;
    that is what tells a hard query from an easy one. chars=False leaves it empty (a router without it).
    """
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS // 2] + " " + text[-MAX_CHARS // 2:]
    low = text.lower()
    words = WORD.findall(low)
    bigrams = {a + " " + b for a, b in zip(words, words[1:])}
    # what is asked, crossed with how much of it: "reverse" of 4 letters and of 10 are different tasks
    asked = {f"{words[0]}|{int(4 * math.log2(1 + len(words)))}"} if words else set()
    if not chars:
        return set(words), bigrams, asked, set()
    shape = " " + " ".join(DIGIT.sub("0", low).split()) + " "
    return set(words), bigrams, asked, {shape[i:i + n] for n in CHAR_NGRAMS for i in range(len(shape) - n + 1)}


def numeric(text: str) -> list[float]:
    """Numbers about the query's shape, in NUMERIC_NAMES order; past MAX_NUMERIC_CHARS, estimated from both ends."""
    length, scale = len(text), 1.0
    if length > MAX_NUMERIC_CHARS:
        text = text[: MAX_NUMERIC_CHARS // 2] + " " + text[-MAX_NUMERIC_CHARS // 2:]
        scale = length / len(text)
    chars = len(text) or 1
    words = text.split()
    numbers = NUMBER.findall(text)
    return [
        math.log1p(length),
        math.log1p(len(words) * scale),
        len(DIGIT.findall(text)) / chars,
        math.log1p(len(numbers) * scale),
        math.log1p(max(map(len, numbers), default=0)),
        math.log1p(len(OPERATOR.findall(text)) * scale),
        math.log1p(text.count("\n") * scale),
        len(UPPER.findall(text)) / chars,
        len(PUNCT.findall(text)) / chars,
        (chars - text.count(" ")) / (len(words) or 1),
    ]


def named(text: str) -> set[str]:
    """Every gram of the text under its weight's name, as training sees them."""
    return {f"{view}:{g}" for view, found in zip(VIEWS, grams(text)) for g in found}
