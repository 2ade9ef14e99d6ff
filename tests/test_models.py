"""The bundled model pair and the checkable task family they are measured on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from classifier.tasks import FAMILIES, LEVELS, Task, is_correct, make_task, make_tasks, make_text_prompts

pytestmark = pytest.mark.slow

MODELS = Path(__file__).resolve().parents[1] / "models"
NAMES = ("large", "small")
# Bounds below what the shipped pair does (docs/MODELS.md has the full table). Seeds are fixed and decoding is
# greedy, so counts move only when the weights do: measured 19/20 easy for the large model; on 80 tasks of
# levels 2-3 the large model solves 57 and the small one 24.
LARGE_EASY, HARD_LEVELS, HARD_MARGIN = 16, (2, 3), 20


@pytest.fixture(scope="module")
def models() -> dict:
    return {n: AutoModelForCausalLM.from_pretrained(MODELS / n, dtype=torch.float32).eval() for n in NAMES}


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(MODELS / "large")


def test_checkpoints_are_gqa_llama_in_bfloat16() -> None:
    for name in NAMES:
        cfg = json.loads((MODELS / name / "config.json").read_text())
        assert cfg["architectures"] == ["LlamaForCausalLM"]
        assert cfg["model_type"] == "llama"
        assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
        assert cfg["hidden_act"] == "silu"
        header = (MODELS / name / "model.safetensors").read_bytes()[:100_000].decode("latin-1")
        assert '"dtype":"BF16"' in header
        assert '"dtype":"F32"' not in header
        gen = json.loads((MODELS / name / "generation_config.json").read_text())
        assert gen["eos_token_id"] == 2
        assert gen["bos_token_id"] == 1
        assert gen["pad_token_id"] == 0
    total = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert total < 40 * 2**20


def test_sizes_and_ratio(models: dict) -> None:
    large, small = (models[n].num_parameters() for n in NAMES)
    assert 10e6 <= large <= 16e6
    assert 3 <= large / small <= 10


def test_same_tokenizer_in_both_folders() -> None:
    for file in ("tokenizer.json", "tokenizer_config.json"):
        assert (MODELS / "large" / file).read_bytes() == (MODELS / "small" / file).read_bytes()


def test_chat_template_and_special_tokens(tok) -> None:
    specials = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"]
    assert tok.convert_tokens_to_ids(specials) == list(range(6))
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "add 12 34"},
            {"role": "assistant", "content": "46"}, {"role": "user", "content": "copy: a b"}]
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|><|system|>Be brief.<|user|>add 12 34<|assistant|>46<|eos|><|user|>copy: a b<|assistant|>"
    ids = tok.apply_chat_template(chat[1:2], add_generation_prompt=True, return_dict=False)
    assert ids == [1, 3] + tok.encode("add 12 34", add_special_tokens=False) + [4]
    # Plain text gets nothing added: completions are [bos] + encode(text) by the caller.
    assert tok("Thou art")["input_ids"] == tok.encode("Thou art", add_special_tokens=False)
    assert 1 not in tok("Thou art")["input_ids"]
    assert tok.decode(tok.encode("O brave new world, 1234!", add_special_tokens=False)) == "O brave new world, 1234!"


@torch.no_grad()
def solved(model, tok, tasks: list[Task]) -> int:
    """How many tasks the model answers exactly, greedy, batched with left padding."""
    tok.padding_side = "left"
    enc = tok.apply_chat_template([[{"role": "user", "content": t.prompt}] for t in tasks], add_generation_prompt=True,
                                  padding=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=24, do_sample=False, eos_token_id=2, pad_token_id=0)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(is_correct(t, o) for t, o in zip(tasks, texts))


def test_large_model_solves_easy_tasks(models: dict, tok) -> None:
    tasks = make_tasks(20, seed=7, levels=(1,), families=("add", "sort"))
    assert solved(models["large"], tok, tasks) >= LARGE_EASY


def test_small_model_fails_more_often_on_harder_tasks(models: dict, tok) -> None:
    """What the router is for: on easy tasks the small model nearly keeps up; on harder ones it falls behind."""
    easy, hard = make_tasks(40, seed=8, levels=(1,)), make_tasks(80, seed=9, levels=HARD_LEVELS)
    large, small = (solved(models[n], tok, hard) for n in NAMES)
    assert large >= small + HARD_MARGIN, (large, small)
    assert solved(models["small"], tok, easy) / len(easy) > small / len(hard)


@torch.no_grad()
def test_small_model_tracks_large_on_text(models: dict, tok) -> None:
    text = (MODELS / "heldout.txt").read_text(encoding="utf-8")[:2000]
    ids = torch.tensor([[1] + tok.encode(text, add_special_tokens=False)[:200]])
    large, small = (models[n](input_ids=ids).logits.argmax(-1) for n in NAMES)
    assert (large == small).float().mean() > 0.3


def test_make_tasks_is_deterministic_and_balanced() -> None:
    a, b = make_tasks(40, seed=3), make_tasks(40, seed=3)
    assert a == b
    assert a != make_tasks(40, seed=4)
    assert {(t.family, t.level) for t in a} == {(f, lv) for f in FAMILIES for lv in LEVELS}
    assert all(t.level == 2 for t in make_tasks(10, seed=0, levels=(2,)))


def test_task_answers_are_right() -> None:
    import random

    rng = random.Random(0)
    for level in LEVELS:
        add = make_task("add", level, rng)
        x, y = map(int, add.prompt.split()[1:])
        assert int(add.answer) == x + y
        assert len(str(y)) == level
        items = make_task("reverse", level, rng).prompt.split()[1:]
        assert len(items) == (2, 4, 6, 8, 10)[level - 1]
        srt = make_task("sort", level, rng)
        assert srt.answer.split() == sorted(srt.prompt.split()[1:])
    with pytest.raises(ValueError):
        make_task("divide", 1, rng)
    with pytest.raises(ValueError):
        make_task("add", 6, rng)


def test_is_correct_is_exact_after_strip() -> None:
    task = Task("add", 1, "add 3 4", "7")
    assert is_correct(task, "7")
    assert is_correct(task, " 7\n")
    assert not is_correct(task, "77")
    assert not is_correct(task, "7.")
    assert not is_correct(task, "")


def test_text_prompts_come_from_heldout_text() -> None:
    prompts = make_text_prompts(5, seed=1)
    assert prompts == make_text_prompts(5, seed=1)
    assert len(set(prompts)) == 5
    heldout = " ".join((MODELS / "heldout.txt").read_text(encoding="utf-8").split())
    for prompt in prompts:
        assert prompt.startswith("continue: ")
        assert prompt.removeprefix("continue: ") in heldout
