"""Prompt token ids from a checkpoint's own tokenizer, with control tokens coming only from the chat template.

A user who types `<|system|>` or `<|eos|>` must get those characters as text: if they became the special ids,
the user could forge turns of the conversation or end it.
"""
from __future__ import annotations

import json

# OpenAI's roles. Templates often build control tokens from the role (`'<|' + role + '|>'`), so a free-form role
# such as "eos" would forge one; transformers' sanitizer leaves such template-built tokens alone.
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                tools: list[dict] | None = None) -> list[int]:
    """The checkpoint's chat template applied to `messages` (and `tools`, OpenAI function tools, which the
    template renders in its own way); message content is encoded as plain text."""
    chat = [_plain_message(m) for m in messages]
    return tokenizer.apply_chat_template(chat, tools=tools or None, add_generation_prompt=add_generation_prompt,
                                         tokenize=True, return_dict=False, sanitize_control_tokens=True)


def encode_text(tokenizer, text: str) -> list[int]:
    """A completion prompt: the model's BOS (when it has one) and then `text` as plain text, special tokens included."""
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return bos + tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)


def _plain_message(message: dict) -> dict:
    if message.get("role") not in ROLES:
        raise ValueError(f"unsupported message role {message.get('role')!r}; expected one of {sorted(ROLES)}")
    plain = {**message, "content": _content_text(message.get("content"))}
    if message.get("tool_calls"):
        plain["tool_calls"] = [_template_call(c) for c in message["tool_calls"]]
    return plain


def _template_call(call: dict) -> dict:
    """OpenAI sends a call's arguments as a JSON string; chat templates (Llama, Qwen, Mistral) expect the object,
    and some read the function's fields at the top level."""
    function = dict(call.get("function") or {})
    if isinstance(function.get("arguments"), str):
        try:
            function["arguments"] = json.loads(function["arguments"])
        except ValueError:
            raise ValueError("a tool call's arguments must be a JSON object") from None
    return {**call, "function": function, **function}


def _content_text(content) -> str | None:
    """OpenAI content is a string or a list of parts; text parts are joined by newlines, as vLLM does."""
    if content is None or isinstance(content, str):
        return content
    if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        raise ValueError("message content parts must all be of type 'text'")
    return "\n".join(p.get("text", "") for p in content)
