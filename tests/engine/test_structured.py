"""Structured output: every constrained answer parses and validates against its schema (24 schemas: nested
objects, enums, arrays, numbers, optional fields, anyOf), sampled from a tiny random model that left alone
would write no JSON at all, in one batch with unconstrained requests that stay HF's greedy."""
from __future__ import annotations

import json

import jsonschema_rs
import pytest

from backends.base import SamplingParams
from backends.engine import EngineConfig, LLMEngine
from tests.engine.conftest import hf_greedy

S = {"type": "string", "maxLength": 6}
I = {"type": "integer", "minimum": -50, "maximum": 50}
N = {"type": "number", "minimum": 0, "maximum": 10}


def obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False}


SCHEMAS = [
    obj({"name": S}),
    obj({"age": I}),
    obj({"score": N}),
    obj({"ok": {"type": "boolean"}}),
    obj({"color": {"enum": ["red", "green", "blue"]}}),
    obj({"n": {"enum": [1, 2, 3]}, "s": {"enum": ["a", "b"]}}),
    obj({"tags": {"type": "array", "items": S, "maxItems": 3}}),
    obj({"nums": {"type": "array", "items": I, "minItems": 1, "maxItems": 4}}),
    obj({"user": obj({"name": S, "age": I})}),
    obj({"a": obj({"b": obj({"c": {"enum": ["deep"]}})})}),
    obj({"points": {"type": "array", "items": obj({"x": I, "y": I}), "maxItems": 3}}),
    obj({"id": I, "label": S, "active": {"type": "boolean"}}),
    obj({"name": S, "nick": S}, required=["name"]),
    obj({"value": {"anyOf": [I, S]}}),
    obj({"kind": {"const": "circle"}, "radius": N}),
    obj({"matrix": {"type": "array", "items": {"type": "array", "items": I, "maxItems": 2}, "maxItems": 2}}),
    obj({"maybe": {"type": ["integer", "null"], "minimum": 0, "maximum": 9}}),
    obj({"status": {"enum": ["todo", "doing", "done"]}, "owner": obj({"id": I})}),
    obj({"price": {"type": "number", "minimum": 1, "maximum": 5}, "qty": {"type": "integer", "minimum": 1, "maximum": 3}}),
    obj({"flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 4}}),
    obj({"person": obj({"name": S, "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2}})}),
    obj({"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
    {"type": "array", "items": obj({"k": {"enum": ["x", "y"]}}), "minItems": 1, "maxItems": 3},
    obj({"t": {"enum": ["a", "b"]}, "sub": obj({"u": I, "v": {"type": "array", "items": N, "maxItems": 2}})}),
]
PROMPT = [7, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def engine(tiny_model) -> LLMEngine:
    return LLMEngine(EngineConfig(str(tiny_model), block_size=4, num_kv_blocks=1024))


@pytest.mark.slow
def test_every_constrained_answer_validates_in_a_mixed_batch(engine, hf_model):
    assert len(SCHEMAS) >= 20
    free = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    params, prompts = [], []
    for i, schema in enumerate(SCHEMAS):
        params += [SamplingParams(max_tokens=200, temperature=1.0, seed=i, structured={"json": schema}), free]
        prompts += [PROMPT + [i + 20], PROMPT[: 1 + i % 5]]
    results = engine.generate(prompts, params)
    for i, schema in enumerate(SCHEMAS):
        answer = results[2 * i]
        assert answer.finish_reason == "stop", (schema, answer.text)
        jsonschema_rs.validate(schema, json.loads(answer.text))
        assert results[2 * i + 1].token_ids == hf_greedy(hf_model, PROMPT[: 1 + i % 5], 12)


def test_json_object_mode_gives_an_object(engine):
    unconstrained = engine.generate([PROMPT], SamplingParams(max_tokens=40, temperature=1.0, seed=1))[0]
    with pytest.raises(ValueError):
        json.loads(unconstrained.text)  # the random model writes no JSON of its own
    out = engine.generate([PROMPT] * 3, [SamplingParams(max_tokens=300, temperature=0.8, seed=s,
                                                        structured={"json": {}}) for s in range(3)])
    for answer in out:
        if answer.finish_reason == "stop":
            assert isinstance(json.loads(answer.text), dict)
        else:  # an unbounded object may run to max_tokens: what there is is still a valid JSON prefix
            assert answer.text.startswith("{")


def test_ebnf_grammar(engine):
    out = engine.generate([PROMPT], SamplingParams(max_tokens=20, temperature=1.0, seed=4,
                                                   structured={"grammar": 'root ::= ("yes" | "no") " " [0-9]'}))[0]
    word, digit = out.text.split(" ")
    assert word in ("yes", "no")
    assert digit.isdigit()
