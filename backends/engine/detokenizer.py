"""Incremental detokenization with stop strings: text deltas that never show a stop string or half a character."""
from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.token_ids = list(prompt_token_ids)
        # Decode a few tokens of context before the new ones: tokenizers render word boundaries relative to it.
        self.prefix_offset = max(len(self.token_ids) - 5, 0)
        self.read_offset = len(self.token_ids)
        self.stop = [s for s in stop if s]
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def add(self, token_id: int) -> bool:
        """Append one generated token; True when a stop string has just completed (the text is cut before it)."""
        self.token_ids.append(token_id)
        delta = self._read(partial_ok=False)
        for s in self.stop:
            at = self.text.find(s, max(0, len(self.text) - len(delta) - len(s) + 1))
            if at != -1:
                self.text, self.stopped = self.text[:at], True
                return True
        return False

    def _read(self, partial_ok: bool) -> str:
        before = self._decode(self.prefix_offset, self.read_offset)
        after = self._decode(self.prefix_offset, len(self.token_ids))
        if len(after) <= len(before) or (after.endswith("\ufffd") and not partial_ok):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        delta = after[len(before) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.token_ids)
        self.text += delta
        return delta

    def take_delta(self, finished: bool) -> str:
        """The text not yet emitted; while running, a tail that could still begin a stop string is held back."""
        if finished and not self.stopped:
            self._read(partial_ok=True)  # the stream ends: bytes that never completed a character go out as they are
        end = len(self.text) if finished else len(self.text) - self._pending_stop_prefix()
        delta, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return delta

    def _pending_stop_prefix(self) -> int:
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def _decode(self, start: int, end: int) -> str:
        return self.tokenizer.decode(self.token_ids[start:end], skip_special_tokens=True)
