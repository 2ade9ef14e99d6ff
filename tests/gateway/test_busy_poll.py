"""FERRYMAN_BUSY_POLL: while a request is in flight the event loop polls instead of sleeping (gateway/drain.py), and
once nothing is in flight it sleeps again. Measured as this process's CPU time over a slow answer's wait (a real
gateway on a loopback port, an echo backend at 50 ms a token) and over an idle stretch after it."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.gateway.conftest import make_gateway
from tests.util import serve


@pytest.mark.parametrize("busy_poll", [True, False])
def test_busy_poll_spends_cpu_only_while_a_request_is_in_flight(tmp_path, tokenizer, busy_poll):
    app, billing, tenant_id, key, _ = make_gateway(tmp_path, tokenizer, delay_s=0.05, busy_poll=busy_poll)
    drain = app.state.drain
    with serve(app) as url:
        answers = []
        asking = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
            json={"model": "ferryman-small", "messages": [{"role": "user", "content": "a b c d e f g h i j k l"}],
                  "max_tokens": 12})))
        asking.start()
        while not drain.in_flight:
            time.sleep(0.001)
        cpu = time.process_time()
        time.sleep(0.3)  # of the answer's 12 x 50 ms
        waiting, polled = time.process_time() - cpu, drain.polling
        asking.join(30)
        time.sleep(0.05)
        cpu = time.process_time()
        time.sleep(0.3)
        idle = time.process_time() - cpu
    assert answers[0].status_code == 200
    assert billing.usage(tenant_id)[0]["completion_tokens"] == 12
    assert polled is busy_poll
    if busy_poll:
        assert waiting > 0.1, f"the loop slept through the wait: {waiting:.3f} s of CPU in 0.3 s"
    else:
        assert waiting < 0.05, f"{waiting:.3f} s of CPU in 0.3 s of waiting"
    assert idle < 0.05, f"{idle:.3f} s of CPU in 0.3 s with nothing in flight"
    assert not drain.polling and not drain.in_flight
