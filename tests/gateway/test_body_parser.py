"""The large-body parser process (gateway/bodies.py) yields the CPU to the gateway's event loop: it runs at a lower
priority, so under a flood of large bodies on contended cores the loop serving every tenant runs first."""
from __future__ import annotations

import asyncio
import json
import os

from gateway.bodies import INLINE_BYTES, PARSER_NICENESS, Parser
from gateway.json_limits import Limits
from gateway.schemas import ChatCompletionRequest


def test_a_large_body_is_parsed_in_a_process_of_lower_priority():
    parser = Parser(Limits(max_messages=10, max_content_parts=10, max_prompt_token_ids=10))
    body = {"model": "m", "messages": [{"role": "user", "content": "a" * (INLINE_BYTES + 1)}]}
    try:
        parsed = asyncio.run(parser.parse(json.dumps(body).encode(), ChatCompletionRequest))
        assert parsed.messages[0].content == body["messages"][0]["content"]
        (pid,) = parser._pool._processes
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, ours + PARSER_NICENESS)
    finally:
        parser.close()
