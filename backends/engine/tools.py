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
    """Splits a streamed answer into content, sent as it comes, and tool calls, streamed as OpenAI's deltas: a call's
    id and name once its `"name"` is written, then its arguments' JSON text as the model writes it, piece by piece.

    Text that may still turn out to be a call is held back (the format's opening marker, or a prefix of it).
    Hermes models may write some content before their first `<tool_call>`; the other formats call at once. A call
    written arguments first is sent whole once its object closes; an answer that began like a call but holds none
    is content after all (sent by finish)."""

    def __init__(self, fmt: ToolFormat) -> None:
        self.fmt, self.text, self.sent = fmt, "", 0
        self.calls: list[dict] = []  # the calls so far, as OpenAI tool_calls (arguments as sent so far)
        self.scan = 0  # where the next call's object is looked for
        self.obj: int | None = None  # where the call being written begins (its "{"); None between calls
        self.current: dict | None = None  # that call, once its id and name are out
        self.args_sent = 0  # characters of its arguments' text already sent

    def add(self, text: str) -> tuple[str, list[dict]]:
        """The content and the tool-call deltas that can go out now."""
        self.text += text
        end = self._content_end()
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out, self._call_deltas()

    def finish(self) -> tuple[str, list[dict]]:
        """The content and tool-call deltas not yet sent, once the answer has ended."""
        deltas = self._call_deltas()
        if self.calls or self.sent >= len(self.text):
            return "", deltas
        content, calls = parse(self.fmt, self.text[self.sent :])  # held back, and no call in it: content
        self.calls = calls
        return content or "", [{"index": k, **c} for k, c in enumerate(calls)]

    def _content_end(self) -> int:
        if self.fmt.name == "hermes":
            at = self.text.find("<tool_call>")
            return at if at != -1 else len(self.text) - _marker_tail(self.text, "<tool_call>")
        return len(self.text) if starts_call(self.fmt, self.text) is False else self.sent

    def _calls_start(self) -> int | None:
        if self.fmt.name == "hermes":
            at = self.text.find("<tool_call>")
            return None if at == -1 else at
        return 0 if starts_call(self.fmt, self.text) else None

    def _call_deltas(self) -> list[dict]:
        start = self._calls_start()
        deltas: list[dict] = []
        while start is not None:
            if self.obj is None:
                at = self.text.find("{", max(self.scan, start))
                if at == -1:
                    break
                self.obj, self.current, self.args_sent = at, None, 0
            end = _json_end(self.text, self.obj)
            deltas += self._progress(self.text[self.obj : end or len(self.text)], end is not None)
            if end is None:
                break
            self.scan, self.obj = end, None
        return deltas

    def _progress(self, body: str, closed: bool) -> list[dict]:
        """Deltas for the call object written so far (`body`; `closed` once complete) beyond those sent."""
        out = []
        if self.current is None:
            head = _NAME.match(body)
            if head is None:  # arguments first, or no call: judged once the object closes
                return self._whole(body) if closed else []
            self.current = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                            "function": {"name": json.loads(f'"{head.group(1)}"'), "arguments": ""}}
            self.calls.append(self.current)
            out.append({"index": len(self.calls) - 1, **self.current, "function": dict(self.current["function"])})
        piece = self._new_args(body, closed)
        if piece:
            self.current["function"]["arguments"] += piece
            out.append({"index": len(self.calls) - 1, "function": {"arguments": piece}})
        return out

    def _new_args(self, body: str, closed: bool) -> str:
        """The arguments' text written since the last call (all of it: a string value only once closed)."""
        key = _ARGS.match(body)
        if key is None:
            return self._late_args(body) if closed else ""
        value_end = _json_end(body, key.end())
        if body[key.end() : key.end() + 1] == '"':  # arguments sent as a JSON string: its text, once whole
            if value_end is None or self.args_sent:
                return ""
            self.args_sent = 1
            return json.loads(body[key.end() : value_end])
        value = body[key.end() : value_end or len(body)]
        piece, self.args_sent = value[self.args_sent :], len(value)
        return piece

    def _late_args(self, body: str) -> str:
        """A closed call whose arguments did not follow its name: they go out whole (or "{}" when none)."""
        if self.args_sent:
            return ""
        self.args_sent = 1
        try:
            return _openai_call({"name": "", **json.loads(body)}, self.fmt.args_key)["function"]["arguments"]
        except (ValueError, KeyError, TypeError):
            return "{}"

    def _whole(self, body: str) -> list[dict]:
        try:
            call = _openai_call(json.loads(body), self.fmt.args_key)
        except (ValueError, KeyError, TypeError, AttributeError):
            return []  # not a call (held back; finish() judges the whole answer)
        self.calls.append(call)
        return [{"index": len(self.calls) - 1, **call}]


_NAME = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS = re.compile(r'\{\s*"name"\s*:\s*"(?:[^"\\]|\\.)*"\s*,\s*"(?:arguments|parameters)"\s*:\s*')
_SCALAR_END = re.compile(r"[,}\]\s]")


def _json_end(text: str, i: int) -> int | None:
    """The index just past the JSON value that starts at text[i]; None while it is incomplete."""
    if i >= len(text):
        return None
    if text[i] not in '{["':
        end = _SCALAR_END.search(text, i)
        return end.start() if end else None
    depth, in_string, escaped = 0, False, False
    for j in range(i, len(text)):
        c = text[j]
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
            if not in_string and depth == 0:
                return j + 1
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return j + 1
    return None


def _marker_tail(text: str, marker: str) -> int:
    """How many of text's last characters could begin `marker`."""
    return next((k for k in range(min(len(marker) - 1, len(text)), 0, -1) if text.endswith(marker[:k])), 0)
