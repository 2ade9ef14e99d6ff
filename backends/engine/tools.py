"""Tool calling for the checkpoint families the engine loads, one entry per output format.

The tools reach the model through the checkpoint's own chat template (render_chat passes `tools`); the model
answers in its family's format, which is recognised from the template and parsed back into OpenAI
`tool_calls`. `tool_choice` "required" or a named function is enforced with a grammar that admits only calls
in that format (structured.py); "auto" lets the model choose and parses what it wrote; "none" renders no tools.

| format  | templates that write          | a call looks like                                                 |
| hermes  | `<tool_call>` (Qwen2.5, Qwen3, Hermes) | `<tool_call>\n{"name": .., "arguments": {..}}\n</tool_call>`, repeated |
| mistral | `[TOOL_CALLS]`                | `[TOOL_CALLS][{"name": .., "arguments": {..}}, ...]`              |
| llama3  | `<|python_tag|>` / ipython    | `{"name": .., "parameters": {..}}` (calls joined by `; `)          |

Markers that are special tokens (`[TOOL_CALLS]`, `<|python_tag|>`) vanish from the decoded text, so parsing
takes them as optional.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class ToolFormat:
    name: str
    args_key: str  # "arguments" or "parameters"
    prefix: str  # written before the calls ("" when the format has no marker in text)
    separator: str  # between two calls
    suffix: str
    starts: tuple[str, ...]  # an answer beginning with one of these (after blanks) is a tool call


FORMATS = {
    "hermes": ToolFormat("hermes", "arguments", "<tool_call>\n", "\n</tool_call>\n<tool_call>\n", "\n</tool_call>",
                         ("<tool_call>",)),
    "mistral": ToolFormat("mistral", "arguments", "[TOOL_CALLS][", ", ", "]", ("[TOOL_CALLS]", "[{")),
    "llama3": ToolFormat("llama3", "parameters", "", "; ", "", ("<|python_tag|>", "{")),
}


def tool_format(tokenizer) -> ToolFormat | None:
    """The format the checkpoint's chat template writes tool calls in; None when it renders no tools."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str) or "tools" not in template:
        return None
    if "<tool_call>" in template:
        return FORMATS["hermes"]
    if "[TOOL_CALLS]" in template:
        return FORMATS["mistral"]
    if "<|python_tag|>" in template or "ipython" in template:
        return FORMATS["llama3"]
    return None


def call_schema(fmt: ToolFormat, tools: list[dict]) -> dict:
    """JSON schema of one call to any of `tools` (OpenAI function tools), in the format's own keys."""
    calls = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                               fmt.args_key: t["function"].get("parameters") or {"type": "object"}},
              "required": ["name", fmt.args_key], "additionalProperties": False} for t in tools]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def grammar(fmt: ToolFormat, tools: list[dict], parallel: bool) -> str:
    """EBNF admitting one call (or, with `parallel`, one or more) to `tools` and nothing else."""
    from backends.engine.structured import json_ebnf

    call = json_ebnf(call_schema(fmt, tools))
    call = call.replace("root ::=", "call ::=", 1)  # the call's rules, renamed: `root` is ours
    calls = f"call ({json.dumps(fmt.separator)} call)*" if parallel else "call"
    root = " ".join([json.dumps(fmt.prefix)] * bool(fmt.prefix) + [calls] + [json.dumps(fmt.suffix)] * bool(fmt.suffix))
    return f"root ::= {root}\n{call}"


def starts_call(fmt: ToolFormat, text: str) -> bool | None:
    """Whether an answer beginning with `text` is a tool call; None while it cannot tell yet."""
    head = text.lstrip()
    if any(head.startswith(s) for s in fmt.starts):
        return True
    if any(s.startswith(head) for s in fmt.starts):
        return None
    return False


def parse(fmt: ToolFormat, text: str) -> tuple[str | None, list[dict]]:
    """An answer's content and OpenAI tool_calls; text that does not parse as calls stays content."""
    content, body = text, text
    if fmt.name == "hermes" and "<tool_call>" in text:  # content may come before the first call
        at = text.index("<tool_call>")
        content, body = text[:at].strip() or None, text[at:]
    elif not starts_call(fmt, text):
        return text, []
    else:
        content = None
    try:
        calls = [_openai_call(c, fmt.args_key) for c in _raw_calls(fmt, body.strip())]
    except (ValueError, KeyError, TypeError, AttributeError):
        return text, []
    return (content, calls) if calls else (text, [])


def _raw_calls(fmt: ToolFormat, text: str) -> list[dict]:
    if fmt.name == "hermes":
        bodies = re.findall(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", text, re.S)
        return [json.loads(b) for b in bodies]
    if fmt.name == "mistral":
        return json.loads(text.removeprefix("[TOOL_CALLS]").strip())
    body = text.removeprefix("<|python_tag|>").strip()
    decoder, calls, at = json.JSONDecoder(), [], 0
    while at < len(body):
        call, at = decoder.raw_decode(body, at)
        calls.append(call)
        at = len(body) - len(body[at:].lstrip().removeprefix(";").lstrip())
    return calls


def _openai_call(call: dict, args_key: str) -> dict:
    args = call[args_key]
    if not isinstance(call["name"], str):
        raise ValueError("a tool name is a string")
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": call["name"], "arguments": args if isinstance(args, str) else json.dumps(args)}}


class ToolCallStream:
    """Splits a streamed answer into content, sent as it comes, and tool calls, parsed once the answer ends.

    Text that may still turn out to be a call is held back (the format's opening marker, or a prefix of it).
    Hermes models may write some content before their first `<tool_call>`; the other formats call at once."""

    def __init__(self, fmt: ToolFormat) -> None:
        self.fmt, self.text, self.sent = fmt, "", 0

    def add(self, text: str) -> str:
        """The content that can go out now."""
        self.text += text
        end = self._content_end()
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """The content not yet sent and the answer's tool calls."""
        content, calls = parse(self.fmt, self.text[self.sent :]) if self.sent < len(self.text) else ("", [])
        return content or "", calls

    def _content_end(self) -> int:
        if self.fmt.name == "hermes":
            at = self.text.find("<tool_call>")
            return at if at != -1 else len(self.text) - _marker_tail(self.text, "<tool_call>")
        return len(self.text) if starts_call(self.fmt, self.text) is False else self.sent


def _marker_tail(text: str, marker: str) -> int:
    """How many of text's last characters could begin `marker`."""
    return next((k for k in range(min(len(marker) - 1, len(text)), 0, -1) if text.endswith(marker[:k])), 0)
