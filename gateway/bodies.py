"""Reading a /v1 request body so that no body can stall the other requests on the event loop.

The route authenticates first (a request without a valid key is refused before its body is read), then
`parse` reads the body. Parsing JSON holds the interpreter lock from start to end, so a worker thread would
not help: a small body (at most `INLINE_BYTES` and `INLINE_VALUES` JSON values, counted cheaply from its
bytes: every value in an array or object but the first follows a comma) is parsed on the loop, in about a
millisecond; a larger one is parsed in a separate process (one per gateway process, started at the first
large body), which also checks the per-request limits (gateway/json_limits.py), so 200,000 tiny messages
cost this process nothing but the bytes. Only a body within the limits comes back, as plain JSON data
(which unpickles much faster than validated models), and is validated here in time bounded by the limits.
The helper runs at a lower CPU priority (nice PARSER_NICENESS): where cores are contended, as under a flood of
large bodies, the event loop serving every tenant gets the CPU before the parsing of those bodies does.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from pydantic import BaseModel, ValidationError

from gateway.errors import invalid, validation_error
from gateway.json_limits import Limits, Refusal, load

INLINE_BYTES = 64 * 1024
INLINE_VALUES = 2_000
PARSER_NICENESS = 10


class Parser:
    """The body parser of one gateway process; its helper process starts at the first large body."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._pool: ProcessPoolExecutor | None = None

    async def parse(self, raw: bytes, kind: type[BaseModel]) -> BaseModel:
        if len(raw) <= INLINE_BYTES and raw.count(b",") + raw.count(b"{") + raw.count(b"[") <= INLINE_VALUES:
            data = load(raw, self.limits)
        else:
            data = await asyncio.get_running_loop().run_in_executor(self._executor(), load, raw, self.limits)
        if isinstance(data, Refusal):
            raise invalid(data.message, data.param)
        try:
            return kind.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None

    def _executor(self) -> ProcessPoolExecutor:
        # spawn, not fork: the gateway process has threads (a forked child could inherit a held lock).
        self._pool = self._pool or ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                       initializer=os.nice, initargs=(PARSER_NICENESS,))
        return self._pool

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown(cancel_futures=True)
