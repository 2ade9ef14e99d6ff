"""The OpenAI request bodies we accept. Unknown fields are ignored, as OpenAI's own server does."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator


def _utf8(text: str) -> str:
    # JSON may spell a lone surrogate ("\ud800"); no tokenizer or database can take it, so refuse it here.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it contains a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[dict] | None = None  # None: an assistant turn that only calls tools
    name: Text | None = None
    tool_calls: list[dict] | None = None  # an assistant turn's calls, sent back with the tools' answers
    tool_call_id: Text | None = None  # a tool turn: which call it answers

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")

    def has_images(self) -> bool:
        return isinstance(self.content, list) and any(part.get("type") != "text" for part in self.content)

    @field_validator("content")
    @classmethod
    def _parts_utf8(cls, v):
        for part in v if isinstance(v, list) else []:
            if isinstance(part.get("text"), str):
                _utf8(part["text"])
        return v


class SamplingFields(BaseModel):
    model: Text
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)  # choices: our engine and replicas only (one request each, one prefill)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # what the engines' generators (int64) accept
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[int, Annotated[float, Field(ge=-100, le=100)]] | None = None  # token id -> added to its logit
    # vLLM's extensions: our engine honours them, an OpenAI-compatible upstream gets them as sent
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    top_k: int | None = Field(None, ge=-1)
    priority: Literal["interactive", "standard", "batch"] | None = None  # Ferryman extension

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops

    def stops(self) -> list[str]:
        return list(self.stop or [])

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    # Passed on to models that can honour them (OpenAI-compatible upstreams); any other model answers 400.
    tools: list[dict] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(SamplingFields):
    prompt: Text | Annotated[list[int], Field(min_length=1)]
    logprobs: int | None = Field(None, ge=0, le=5)
