"""Rolling restarts: SIGTERM drains. /ready turns 503, new requests get 503 + Retry-After, requests in flight
finish within `shutdown_grace_s`; streams still running then end with an SSE error event and are settled as
failed, at no cost (docs/BILLING.md); the process exits 0 once nothing is in flight.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import AsyncIterator

import uvicorn

from gateway import http_limits
from gateway.errors import unavailable

log = logging.getLogger("ferryman")
POLL_LINGER_S = 0.005  # busy polling goes on this long after the last request in flight ended


class Drain:
    """The gateway's restart state, shared by the drain gate (middleware), /ready and the streams in flight."""

    def __init__(self, grace_s: float, busy_poll: bool = False):
        self.grace_s = grace_s
        self.draining = False
        self.in_flight = 0
        self.deadline: float | None = None  # event-loop time at which streams still running are cut
        self.waits: set[asyncio.Timeout] = set()  # streams waiting for their next delta
        self.busy_poll, self.polling, self.busy_until = busy_poll, False, 0.0

    def enter(self) -> None:
        """A request came in (the drain gate): counted in flight; with busy polling, the loop polls until none is."""
        self.in_flight += 1
        if self.busy_poll and not self.polling:
            self.polling = True
            asyncio.get_running_loop().call_soon(self._poll)

    def _poll(self) -> None:
        # A callback that schedules itself again keeps the loop's ready queue non-empty, so each turn of the loop
        # polls its sockets without waiting (epoll with a zero timeout) instead of letting the CPU go idle. Some hosts
        # (virtual machines without guest halt-polling) wake an idle CPU slowly and cold: there the work after a
        # 40 ms upstream ran 2-3x slower (bench/idle_penalty.py). One core's worth of CPU while anything is in flight,
        # and for POLL_LINGER_S after: a client's next request, a moment after its answer, finds the loop awake.
        loop = asyncio.get_running_loop()
        if self.in_flight:
            self.busy_until = loop.time() + POLL_LINGER_S
        if loop.time() < self.busy_until:
            loop.call_soon(self._poll)
        else:
            self.polling = False

    def begin(self) -> None:
        """Called on the event loop (a loop signal handler)."""
        if not self.draining:
            self.draining, self.deadline = True, time.monotonic() + self.grace_s
            log.info("draining: %d request(s) in flight, %.0f s grace", self.in_flight, self.grace_s)
            for wait in self.waits:  # a stream silent since before the signal is cut on time too
                wait.reschedule(self.deadline)

    def past_deadline(self) -> bool:
        """Whether streams still running are being cut now (the request's failure is then the gateway's)."""
        return self.draining and time.monotonic() >= self.deadline

    async def guard(self, deltas: AsyncIterator) -> AsyncIterator:
        """Pass a generation through; past the drain deadline, stop it (it settles as failed) and raise 503."""
        it = aiter(deltas)
        while True:
            try:
                async with asyncio.timeout_at(self.deadline) as wait:
                    self.waits.add(wait)
                    try:
                        delta = await anext(it)
                    finally:
                        self.waits.discard(wait)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not wait.expired():  # the generation's own timeout: it speaks for itself
                    raise
                raise unavailable("The gateway restarted before this answer was complete; retry the request.",
                                  "shutting_down") from None
            yield delta


def serve(app, host: str, port: int, sockets: list | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT, drain, and return (exit 0). A second signal stops at once.
    `sockets`: listen on these (a worker of `serve --workers`, gateway/workers.py) instead of binding host:port."""
    config = http_limits.uvicorn_config(app, app.state.settings, host=host, port=port, log_level="warning",
                                        timeout_graceful_shutdown=5)
    DrainingServer(config, app.state.drain).run(sockets=sockets)


class DrainingServer(uvicorn.Server):
    """uvicorn alone stops listening at once and re-raises SIGTERM (exit 143); a gateway drains first."""

    def __init__(self, config: uvicorn.Config, drain: Drain):
        super().__init__(config)
        self.drain = drain

    @contextlib.contextmanager
    def capture_signals(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def on_signal(self) -> None:
        if self.drain.draining:
            self.should_exit = True
        self.drain.begin()

    async def on_tick(self, counter: int) -> bool:
        # In flight reaches 0 by the deadline: streams past it end themselves (Drain.guard) and settle. A request
        # stuck elsewhere (say, on a dead database) gets a little longer, then uvicorn cancels it.
        if self.drain.draining and (self.drain.in_flight == 0 or time.monotonic() > self.drain.deadline + 10):
            return True
        return await super().on_tick(counter)
