"""Tool calling per family through the replica's OpenAI API, with the official client: tiny random checkpoints
(test_families.py's), each with a tokenizer whose chat template renders tools as its family does (condensed from
the families' own templates: Qwen2.5/Hermes `<tools>` + `<tool_call>`, Mistral `[AVAILABLE_TOOLS]` +
`[TOOL_CALLS]`, Llama 3.1 JSON calls with `ipython` results). A random model never calls a tool on its own, so
the calls come from the grammar: "required" and a named function must yield calls that parse and validate."""
from __future__ import annotations

import json

import jsonschema_rs
import openai
import pytest
from fastapi.testclient import TestClient

from backends.engine import EngineBackend, EngineConfig
from backends.engine.tools import FORMATS, ToolCallStream, parse
from backends.server import create_replica_app
from tests.engine.conftest import TEXT
from tests.engine.test_families import FAMILIES as CONFIGS
from tests.engine.test_families import SIZES

_TURNS = ("{% for m in messages %}{% if m.role == 'tool' %}{{ TOOL_OPEN + m.content + TOOL_CLOSE }}"
          "{% elif m.tool_calls %}{{ CALLS_OPEN }}{% for c in m.tool_calls %}{{ {'name': c.function.name, ARGS: "
          "c.function.arguments} | tojson }}{% endfor %}{{ CALLS_CLOSE }}"
          "{% else %}{{ ROLE_OPEN + m.role + ROLE_CLOSE + (m.content or '') + END }}{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}{{ ROLE_OPEN + 'assistant' + ROLE_CLOSE }}{% endif %}")


def _template(tools_block: str, **parts: str) -> str:
    sets = "".join(f"{{% set {k} = {json.dumps(v)} %}}" for k, v in parts.items())
    return sets + "{% if tools %}" + tools_block + "{% endif %}" + _TURNS


FAMILIES = {
    "qwen2.5": ("hermes", ["<|im_start|>", "<|im_end|>"], _template(
        "{{ '<|im_start|>system\\n# Tools\\n<tools>\\n' }}{% for t in tools %}{{ t | tojson }}\\n{% endfor %}"
        "{{ '</tools>\\nFor each call return <tool_call>\\n{\"name\": .., \"arguments\": ..}\\n</tool_call><|im_end|>\\n' }}",
        ROLE_OPEN="<|im_start|>", ROLE_CLOSE="\n", END="<|im_end|>\n", ARGS="arguments",
        CALLS_OPEN="<|im_start|>assistant\n<tool_call>\n", CALLS_CLOSE="\n</tool_call><|im_end|>\n",
        TOOL_OPEN="<|im_start|>user\n<tool_response>\n", TOOL_CLOSE="\n</tool_response><|im_end|>\n")),
    "mistral": ("mistral", ["[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                            "[TOOL_RESULTS]", "[/TOOL_RESULTS]"], _template(
        "{{ '[AVAILABLE_TOOLS]' + (tools | tojson) + '[/AVAILABLE_TOOLS]' }}",
        ROLE_OPEN="[INST]", ROLE_CLOSE=" ", END="[/INST]", ARGS="arguments", CALLS_OPEN="[TOOL_CALLS][",
        CALLS_CLOSE="]</s>", TOOL_OPEN="[TOOL_RESULTS]", TOOL_CLOSE="[/TOOL_RESULTS]")),
    "llama3.2": ("llama3", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>"], _template(
        "{{ '<|start_header_id|>user<|end_header_id|>\\n\\nGiven the following functions, respond with a JSON '"
        "'function call {\"name\": function name, \"parameters\": dictionary of argument name and its value}.\\n' }}"
        "{% for t in tools %}{{ t | tojson }}\\n{% endfor %}{{ '<|eot_id|>' }}",
        ROLE_OPEN="<|start_header_id|>", ROLE_CLOSE="<|end_header_id|>\n\n", END="<|eot_id|>", ARGS="parameters",
        CALLS_OPEN="<|start_header_id|>assistant<|end_header_id|>\n\n<|python_tag|>", CALLS_CLOSE="<|eot_id|>",
        TOOL_OPEN="<|start_header_id|>ipython<|end_header_id|>\n\n", TOOL_CLOSE="<|eot_id|>")),
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 10},
                                                "unit": {"enum": ["c", "f"]}},
                                                "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = {t["function"]["name"]: t for t in (WEATHER, ADD)}
ASK = [{"role": "user", "content": "the weather in paris?"}]


def _checkpoint(path, family: str):
    """test_families' tiny random checkpoint, with room for a prompt that lists tools (Mistral v0.3: no window)."""
    import torch
    import transformers

    config_class, fields, dtype = CONFIGS[family]
    fields = {**SIZES, **fields, "max_position_embeddings": 1024} | ({"sliding_window": None} if family == "mistral" else {})
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_class)(**fields)).to(dtype).save_pretrained(path)


def _tokenizer(path, specials: list[str], template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, special_tokens=["<pad>", "<s>", "</s>", *specials],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT * 4 + ['{"name": "get_weather", "arguments": {"city": "paris"}}'] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   chat_template=template)
    fast.save_pretrained(path)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    name = request.param
    fmt, specials, template = FAMILIES[name]
    path = tmp_path_factory.mktemp(name.replace(".", "_"))
    _checkpoint(path, name)
    _tokenizer(path, specials, template)
    backend = EngineBackend(name, EngineConfig(model=str(path), name=name, block_size=4, num_kv_blocks=512))
    with TestClient(create_replica_app(backend, backend.tokenizer, context_length=1024)) as http:
        yield fmt, openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


def _valid(call) -> dict:
    args = json.loads(call.function.arguments)
    jsonschema_rs.validate(TOOLS[call.function.name]["function"]["parameters"], args)
    return args


def test_required_tool_choice_yields_valid_calls(family):
    fmt, client = family
    answer = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, ADD], tool_choice="required",
                                            temperature=0.8, seed=1, max_tokens=200, parallel_tool_calls=False)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    _valid(choice.message.tool_calls[0])


def test_named_tool_choice_calls_that_function(family):
    _, client = family
    answer = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER, ADD], temperature=1.0, seed=2,
                                            tool_choice={"type": "function", "function": {"name": "add"}},
                                            max_tokens=200)
    calls = answer.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["add"]
    _valid(calls[0])


def test_streamed_tool_calls_arrive_token_by_token(family):
    """The official client's stream helper accumulates the deltas (id and name, then the arguments in pieces) into
    the same call the whole answer has."""
    _, client = family
    ask = dict(model="m", messages=ASK, tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=200,
               parallel_tool_calls=False)
    whole = client.chat.completions.create(**ask).choices[0].message.tool_calls[0]
    with client.chat.completions.stream(**ask) as stream:
        pieces = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion().choices[0]
    [call] = final.message.tool_calls
    assert (call.function.name, call.function.arguments) == (whole.function.name, whole.function.arguments)
    assert final.finish_reason == "tool_calls" and call.id.startswith("call_")
    assert len(pieces) > 3 and "".join(p.arguments_delta for p in pieces) == call.function.arguments
    _valid(call)


def test_tool_results_go_back_as_role_tool(family):
    _, client = family
    first = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], tool_choice="required",
                                           temperature=0, max_tokens=200, parallel_tool_calls=False)
    call = first.choices[0].message.tool_calls[0]
    chat = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 c"}]
    second = client.chat.completions.create(model="m", messages=chat, tools=[WEATHER], temperature=0, max_tokens=5)
    assert second.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt
    without = client.chat.completions.create(model="m", messages=chat, tools=[WEATHER], tool_choice="none",
                                             temperature=0, max_tokens=5)
    assert without.choices[0].message.tool_calls is None
    assert without.usage.prompt_tokens < second.usage.prompt_tokens  # "none": the tools are not rendered


AUTO_ANSWERS = [
    ("hermes", 'sure <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', [("add", {"a": 1, "b": 2})]),
    ("hermes", "no call here", []),
    ("mistral", '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "f", "arguments": {}}]',
     [("add", {"a": 1, "b": 2}), ("f", {})]),
    ("mistral", '[{"name": "add", "arguments": {"a": 3, "b": 4}}]', [("add", {"a": 3, "b": 4})]),  # marker decoded away
    ("llama3", '{"name": "add", "parameters": {"a": 1, "b": 2}}; {"name": "f", "parameters": {}}',
     [("add", {"a": 1, "b": 2}), ("f", {})]),
    ("llama3", "{not json", []),
]


@pytest.mark.parametrize("fmt, text, calls", AUTO_ANSWERS)
def test_auto_answers_parse_in_each_format(fmt, text, calls):
    content, parsed = parse(FORMATS[fmt], text)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed] == calls
    if not calls:
        assert content == text


def test_stream_holds_back_a_possible_marker_and_sends_content_before_it():
    stream = ToolCallStream(FORMATS["hermes"])
    (first, none), (second, calls) = stream.add("let me check <tool"), stream.add("_call>\n{\"name\": \"add\", \"argu")
    assert (first, none, second) == ("let me check ", [], "")
    assert [(c["index"], c["function"]) for c in calls] == [(0, {"name": "add", "arguments": ""})]
    assert stream.add('ments": {"a"') == ("", [{"index": 0, "function": {"arguments": '{"a"'}}])
    assert stream.add(": 1}}\n</tool_call>") == ("", [{"index": 0, "function": {"arguments": ": 1}"}}])
    assert stream.finish() == ("", [])
    assert stream.calls[0]["function"] == {"name": "add", "arguments": '{"a": 1}'}


@pytest.mark.parametrize("fmt, text, calls", AUTO_ANSWERS)
def test_streamed_a_few_characters_at_a_time_the_calls_accumulate_to_the_parsed_ones(fmt, text, calls):
    """Fed a few characters at a time (as tokens come), the deltas accumulated the way OpenAI clients do give the
    same content and calls as parsing the whole answer; arguments arrive in pieces, not at the end."""
    stream, content, got, pieces = ToolCallStream(FORMATS[fmt]), "", [], 0
    for at in range(0, len(text), 3):
        more, deltas = stream.add(text[at : at + 3])
        content += more
        pieces += sum(bool(d["function"].get("arguments")) for d in deltas)
        _accumulate(got, deltas)
    rest, deltas = stream.finish()
    _accumulate(got, deltas)
    whole_content, _ = parse(FORMATS[fmt], text)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == calls
    assert [c["function"]["arguments"] for c in got] == [c["function"]["arguments"] for c in stream.calls]
    assert (content + rest).strip() == (whole_content or "").strip()
    assert pieces >= 2 * sum(bool(args) for _, args in calls)  # each non-empty arguments object in 2+ pieces


def test_a_call_written_arguments_first_goes_out_whole():
    stream = ToolCallStream(FORMATS["llama3"])
    assert stream.add('{"parameters": {"a": 1}, ') == ("", [])
    _, [call] = stream.add('"name": "add"}')
    assert (call["index"], call["function"]) == (0, {"name": "add", "arguments": '{"a": 1}'})


def _accumulate(calls: list[dict], deltas: list[dict]) -> None:
    for d in deltas:
        if d["index"] == len(calls):
            calls.append({"id": d["id"], "function": dict(d["function"])})
        else:
            calls[d["index"]]["function"]["arguments"] += d["function"]["arguments"]
