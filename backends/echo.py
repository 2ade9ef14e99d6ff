"""An instant backend that answers by echoing the prompt's tokens: for gateway tests and the overhead benchmark,
where the model's own time must not hide the gateway's."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

from backends.base import GenerationRequest, TokenDelta, Usage


class EchoBackend:
    def __init__(self, name: str, decode=lambda ids: " ".join(map(str, ids)), delay_s: float = 0.0):
        self.name = name
        self.decode = decode
        self.delay_s = delay_s  # per token, to hold a stream open in disconnect and timeout tests
        self.aborted: set[str] = set()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenDelta]:
        ids = (request.prompt_token_ids * request.params.max_tokens)[: request.params.max_tokens]
        for i, token in enumerate(ids):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            last = i == len(ids) - 1
            usage = Usage(len(request.prompt_token_ids), len(ids)) if last else None
            yield TokenDelta(self.decode([token]), [token], "length" if last else None, usage)

    async def abort(self, request_id: str) -> None:
        self.aborted.add(request_id)
