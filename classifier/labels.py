"""Labels from the model pair itself (the method of Hybrid LLM and RouteLLM).

Both models answer every prompt greedily. On tasks with a checkable answer the quality of an answer
is exact match; on free text it is the large model's judgement of the answer: the geometric-mean
probability, under the large model, of the answer's tokens. A prompt is labelled "the small model
does not suffice" when the large model's answer beats the small one's by more than a margin.

This talks to the checkpoints through transformers directly: the classifier must not depend on
backends/. It is the only module here that imports torch.
"""
from __future__ import annotations

import csv
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from classifier.tasks import is_correct, make_tasks, make_text_prompts

MODELS = Path(__file__).resolve().parents[1] / "models"
TASK_MARGIN = 0.0  # exact match: the large model right and the small one wrong
TEXT_MARGIN = 0.01  # in geometric-mean token probability under the large model (median gap: 0.006)
TASK_TOKENS, TEXT_TOKENS = 24, 24  # the longest task answer is 23 tokens and its end of turn
# seeds apart from the ones the models were trained and measured with
TASK_SEED, TEXT_SEED = 5_000, 5_001


@dataclass
class Labelled:
    prompt: str
    kind: str
    family: str
    level: int
    answer: str
    small_output: str
    large_output: str
    quality_small: float
    quality_large: float
    small_confidence: float
    label: int


@dataclass
class Answer:
    text: str
    ids: list[int]  # generated tokens up to and including the end of turn, if it came
    mean_logprob: float  # over the answer's content tokens (what a client would see), -inf if none


class Pair:
    def __init__(self, root: Path = MODELS, batch_size: int = 64, threads: int = 1) -> None:
        # tiny models on a shared CPU: more threads than one thrash (measured 10-100x slower under load)
        torch.set_num_threads(threads)
        self.tok = AutoTokenizer.from_pretrained(root / "large")
        self.tok.padding_side = "left"
        self.small = AutoModelForCausalLM.from_pretrained(root / "small", dtype=torch.float32).eval()
        self.large = AutoModelForCausalLM.from_pretrained(root / "large", dtype=torch.float32).eval()
        self.batch_size = batch_size

    def render(self, prompts: list[str]) -> list[str]:
        return [self.tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=False) for p in prompts]

    def generate(self, model, prompts: list[str], max_new_tokens: int) -> list[Answer]:
        """Greedy answers, batched by prompt length: a batch runs as long as its longest answer."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        answers: list[Answer] = [None] * len(prompts)  # type: ignore[list-item]
        for start in tqdm(range(0, len(order), self.batch_size), desc=f"generate {Path(model.name_or_path).name}", unit="batch"):
            idx = order[start:start + self.batch_size]
            for i, answer in zip(idx, self._generate_batch(model, [prompts[i] for i in idx], max_new_tokens)):
                answers[i] = answer
        return answers

    @torch.inference_mode()
    def _generate_batch(self, model, prompts: list[str], max_new_tokens: int) -> list[Answer]:
        eos = self.tok.eos_token_id
        batch = self.tok(self.render(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=self.tok.pad_token_id, output_scores=True, return_dict_in_generate=True)
        new = gen.sequences[:, batch["input_ids"].shape[1]:]
        logprobs = model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
        out = []
        for ids, lp in zip(new.tolist(), logprobs.tolist()):
            n = ids.index(eos) if eos in ids else len(ids)
            out.append(Answer(self.tok.decode(ids[:n], skip_special_tokens=True), ids[:n + 1],
                              sum(lp[:n]) / n if n else -math.inf))
        return out

    @torch.inference_mode()
    def judge(self, prompts: list[str], answers: list[Answer]) -> list[float]:
        """Geometric-mean probability of each answer's tokens under the large model."""
        out: list[float] = []
        for i in tqdm(range(0, len(prompts), self.batch_size), desc="judge with large", unit="batch"):
            rendered = self.tok(self.render(prompts[i:i + self.batch_size]), add_special_tokens=False)["input_ids"]
            seqs = [p + a.ids for p, a in zip(rendered, answers[i:i + self.batch_size])]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), self.tok.pad_token_id)
            mask = torch.zeros_like(ids)
            for row, s in enumerate(seqs):
                ids[row, :len(s)], mask[row, :len(s)] = torch.tensor(s), 1
            logp = self.large(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
            for row, (p, s) in enumerate(zip(rendered, seqs)):
                targets = torch.tensor(s[len(p):])
                picked = logp[row, len(p) - 1:len(s) - 1].gather(1, targets[:, None])
                out.append(math.exp(picked.mean().item()))
        return out


def label_tasks(pair: Pair, n: int) -> list[Labelled]:
    # one row per distinct prompt: short level-1 tasks repeat often and would outweigh the rest
    tasks = list({t.prompt: t for t in make_tasks(n, TASK_SEED)}.values())
    prompts = [t.prompt for t in tasks]
    small, large = (pair.generate(m, prompts, TASK_TOKENS) for m in (pair.small, pair.large))
    rows = []
    for t, s, l in zip(tasks, small, large):
        qs, ql = float(is_correct(t, s.text)), float(is_correct(t, l.text))
        rows.append(Labelled(t.prompt, "task", t.family, t.level, t.answer, s.text, l.text, qs, ql,
                             s.mean_logprob, int(ql - qs > TASK_MARGIN)))
    return rows


def label_texts(pair: Pair, n: int) -> list[Labelled]:
    prompts = make_text_prompts(n, TEXT_SEED)
    small, large = (pair.generate(m, prompts, TEXT_TOKENS) for m in (pair.small, pair.large))
    qs, ql = pair.judge(prompts, small), pair.judge(prompts, large)
    return [Labelled(p, "text", "continue", 0, "", s.text, l.text, a, b, s.mean_logprob, int(b - a > TEXT_MARGIN))
            for p, s, l, a, b in zip(prompts, small, large, qs, ql)]


def write_labels(rows: list[Labelled], out_dir: Path, small: str = "ferryman-small", large: str = "ferryman-large") -> None:
    """In the label-file format (classifier/labelfile.py), split by a hash of the prompt into the rows the
    bundled router is trained on and the rows it is tested on (a fifth)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: open(out_dir / f"bundled_{name}.csv", "w", newline="") for name in ("train", "test")}
    writers = {name: csv.writer(f) for name, f in files.items()}
    for w in writers.values():
        w.writerow(["prompt", f"{small}_score", f"{large}_score", "confidence", "family", "level"])
    for r in rows:
        split = "test" if zlib.crc32(r.prompt.encode()) % 10 >= 8 else "train"
        writers[split].writerow([r.prompt, r.quality_small, r.quality_large, r.small_confidence, r.family, r.level])
    for f in files.values():
        f.close()


if __name__ == "__main__":
    # python -m classifier.labels: relabel the bundled pair (minutes of CPU), then retrain with
    # ferryman router train --labels classifier/artifacts/bundled_train.csv --out classifier/artifacts/router.npz
    pair = Pair()
    write_labels(label_tasks(pair, 3000) + label_texts(pair, 600), Path(__file__).resolve().parent / "artifacts")
