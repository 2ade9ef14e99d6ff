"""The engine behind the Backend protocol: one worker thread steps the engine; asyncio streams read from it.

Requests from any coroutine land in an inbox; the worker drains it between steps, so every request that
is in flight batches together, and the event loop never waits on a forward pass. With nothing to do the
worker blocks on the inbox and uses no CPU.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from typing import AsyncIterator

from backends.base import GenerationRequest, TokenDelta, Usage
from backends.engine.config import EngineConfig
from backends.engine.llm_engine import LLMEngine, RequestOutput

_STOP = object()


class EngineBackend:
    def __init__(self, name: str, config: EngineConfig) -> None:
        self.name = name
        self.engine = LLMEngine(config)
        self.tokenizer = self.engine.tokenizer
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        if self._thread is not None:
            self._inbox.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def check(self, request: GenerationRequest) -> None:
        """Raise ValueError for a request the engine would refuse, before anything is sent for it."""
        self.engine.check_request(request.prompt_token_ids, request.params)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        self.check(request)
        if request.request_id in self._streams:
            raise ValueError(f"request id {request.request_id!r} is already running")
        await self.start()
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request.request_id] = (asyncio.get_running_loop(), stream)
        self._inbox.put(("add", request))
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finish_reason is not None
                yield item
        finally:
            if not finished:  # the consumer went away mid-stream: free the engine's work
                self._inbox.put(("abort", request.request_id))
            self._streams.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))

    def _run(self) -> None:
        while True:
            try:
                if not self._drain_inbox():
                    break
                if self.engine.has_unfinished():
                    for out in self.engine.step():
                        self._deliver(out.request_id, _delta(out))
            except Exception as exc:  # a failed step must not leave streams waiting forever
                for request_id in list(self.engine.seqs):
                    self.engine.abort(request_id)
                    self._deliver(request_id, exc)
        for request_id in list(self.engine.seqs):  # stopped: end every open stream
            self._deliver(request_id, _delta(self.engine.abort(request_id)))

    def _drain_inbox(self) -> bool:
        """Apply queued adds and aborts; block while idle. False once stop() was called."""
        while True:
            try:
                item = self._inbox.get(block=not self.engine.has_unfinished())
            except queue.Empty:
                return True
            if item is _STOP:
                return False
            kind, arg = item
            if kind == "add":
                self._add(arg)
            elif out := self.engine.abort(arg):
                self._deliver(arg, _delta(out))

    def _add(self, request: GenerationRequest) -> None:
        try:
            self.engine.add_request(request.request_id, request.prompt_token_ids, request.params, request.priority,
                                    request.cache_salt, request.public_prefix_len, request.tenant_weight)
        except ValueError as exc:
            self._deliver(request.request_id, exc)

    def _deliver(self, request_id: str, item: TokenDelta | BaseException) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, stream = target
            loop.call_soon_threadsafe(stream.put_nowait, item)


def _delta(out: RequestOutput) -> TokenDelta:
    usage = Usage(out.prompt_tokens, out.completion_tokens, out.cached_tokens, gpu_seconds=out.gpu_seconds) if out.finished else None
    return TokenDelta(out.text, out.token_ids, out.finish_reason, usage, out.logprobs, top_logprobs=out.top_logprobs)

