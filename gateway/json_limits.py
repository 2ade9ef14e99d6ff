"""A request body's JSON and the per-request limits, checked before any validation. Standard library only: this
runs in the gateway process for small bodies and in its body-parser process for large ones
(gateway/bodies.py), which imports nothing else."""
from __future__ import annotations

import json
from dataclasses import dataclass

JSON_HINT = ("We could not parse the JSON body of your request. The API expects a JSON object "
             "(Content-Type: application/json) encoded as UTF-8.")


@dataclass(frozen=True)
class Limits:
    max_messages: int
    max_content_parts: int
    max_prompt_token_ids: int


@dataclass(frozen=True)
class Refusal:
    """Why a body is refused (a 400); plain data, so that it crosses from the parser process."""
    message: str
    param: str | None = None


def load(raw: bytes, limits: Limits) -> dict | Refusal:
    """The body's JSON, or why it is refused (malformed, not an object, over a limit). Runs in either process."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return Refusal(f"{JSON_HINT} ({exc.msg} at character {exc.pos}.)")
    except (ValueError, RecursionError) as exc:  # not UTF-8 (UnicodeDecodeError is a ValueError); nested too deep
        return Refusal(f"{JSON_HINT} ({exc.__class__.__name__}.)")
    if not isinstance(data, dict):
        return Refusal(JSON_HINT)
    return over_limit(data, limits) or data


def over_limit(data: dict, limits: Limits) -> Refusal | None:
    """The 400 naming the first limit the body passes, checked on the raw JSON (before any validation)."""
    messages = data.get("messages")
    messages = messages if isinstance(messages, list) else []
    if len(messages) > limits.max_messages:
        return _too_many("messages", len(messages), limits.max_messages, "FERRYMAN_MAX_MESSAGES")
    parts = sum(len(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list))
    if parts > limits.max_content_parts:
        return _too_many("messages", parts, limits.max_content_parts, "FERRYMAN_MAX_CONTENT_PARTS", "content parts")
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) > limits.max_prompt_token_ids:
        return _too_many("prompt", len(prompt), limits.max_prompt_token_ids, "FERRYMAN_MAX_PROMPT_TOKEN_IDS",
                         "token ids")
    return None


def _too_many(param: str, n: int, limit: int, setting: str, what: str | None = None) -> Refusal:
    return Refusal(f"Too many {what or param}: the request has {n}, this gateway accepts at most {limit} "
                   f"per request ({setting}).", param)
