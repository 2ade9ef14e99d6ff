"""Past MAX_NUMERIC_CHARS the numeric features are estimated from both ends of the text (bounded time on a
4 MB prompt): on a text of uniform shape the estimate equals the whole read, and a short text is read whole."""
from __future__ import annotations

import math

import pytest

from classifier import features
from classifier.features import MAX_NUMERIC_CHARS, numeric


def whole_read(text: str, monkeypatch) -> list[float]:
    monkeypatch.setattr(features, "MAX_NUMERIC_CHARS", len(text) + 1)
    return numeric(text)


def test_a_long_uniform_text_is_estimated_as_its_whole_read(monkeypatch):
    text = "Add 41 and 73, then (x * 2) = ?\n" * (4 * MAX_NUMERIC_CHARS // 32)
    estimate = numeric(text)
    exact = whole_read(text, monkeypatch)
    assert estimate[0] == exact[0]  # the length is never estimated
    assert estimate == pytest.approx(exact, rel=1e-3, abs=1e-3)


def test_a_short_text_is_read_whole(monkeypatch):
    text = "reverse: s h i p\n" * 100
    assert numeric(text) == whole_read(text, monkeypatch)
    assert numeric(text)[0] == math.log1p(len(text))
