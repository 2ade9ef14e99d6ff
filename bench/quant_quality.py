"""What weight-only quantization costs the large model, and what QuantLinear costs on this CPU.

For models/large at fp32, bf16, int8 (per channel) and int4 (group-wise, several group sizes):
- perplexity on held-out text (models/heldout.txt, a play never used in training), and how often the
  next-token argmax agrees with fp32's;
- exact-match accuracy per level on tasks made with a seed apart from training and labelling;
- bytes of weights: the linear layers that get quantized, and the whole model.
Then a micro-benchmark of QuantLinear against nn.Linear at decode shapes (M = 1 and 8) on CPU.

Writes the `quant_quality` section of docs/BENCHMARKS.md, docs/img/quant_quality.png and
docs/data/quant_quality.csv.

    .venv/bin/python bench/quant_quality.py [--per-cell 10] [--ppl-tokens 8192] [--variants fp32 int8 int4-g64 ...]
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from backends.engine.quant import QuantLinear, quantize_model, weight_bytes  # noqa: E402
from backends.engine.quant.model import quantizable_linears  # noqa: E402
from bench.report import spread, table, write_section  # noqa: E402
from classifier.tasks import HELDOUT_TEXT, LEVELS, Task, is_correct, make_tasks  # noqa: E402

MODEL = ROOT / "models" / "large"
PLOT = ROOT / "docs" / "img" / "quant_quality.png"
CSV = ROOT / "docs" / "data" / "quant_quality.csv"
TASK_SEED = 6_000  # apart from training (0, 1) and labelling (5_000, 5_001)
TASK_TOKENS = 32
WINDOW = 256  # tokens per perplexity window, well inside max_position_embeddings
VARIANTS = ("fp32", "bf16", "int8", "int4-g128", "int4-g64", "int4-g32")
DEFAULT_VARIANTS = ("fp32", "bf16", "int8", "int4-g128", "int4-g32")
ROUNDS = 7  # interleaved rounds of the QuantLinear micro-benchmark


def build(name: str, base: nn.Module) -> nn.Module:
    """The fp32 model as the variant `name`: cast, or with its linears (not lm_head) quantized."""
    model = copy.deepcopy(base)
    if name == "bf16":
        return model.to(torch.bfloat16)
    if name.startswith("int"):
        mode, _, group = name.partition("-g")
        quantize_model(model, mode, group_size=int(group or 128))
    return model


def linear_bytes(model: nn.Module) -> int:
    """Bytes of the layers quantize_model replaces (every linear but lm_head), quantized or not."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            total += m.weight_bytes()
        elif isinstance(m, nn.Linear) and name != "lm_head":
            total += m.weight.numel() * m.weight.element_size()
    return total


@torch.inference_mode()
def perplexity(model: nn.Module, windows: torch.Tensor, reference: list[torch.Tensor] | None,
               batch: int = 8) -> tuple[float, float, list[torch.Tensor]]:
    """exp(mean NLL) over the windows, the share of argmax predictions equal to the reference's, and the argmaxes."""
    nll, count, agree, argmaxes = 0.0, 0, 0, []
    for i in range(0, len(windows), batch):
        ids = windows[i:i + batch]
        logits = model(input_ids=ids).logits.float()[:, :-1]
        targets = ids[:, 1:]
        nll += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
        argmaxes.append(logits.argmax(-1))
        if reference is not None:
            agree += (argmaxes[-1] == reference[len(argmaxes) - 1]).sum().item()
    return float(torch.tensor(nll / count).exp()), agree / count, argmaxes


@torch.inference_mode()
def answers(model: nn.Module, tok, tasks: list[Task], batch: int = 50) -> list[str]:
    out = []
    for i in range(0, len(tasks), batch):
        rendered = [tok.apply_chat_template([{"role": "user", "content": t.prompt}], add_generation_prompt=True,
                                            tokenize=False) for t in tasks[i:i + batch]]
        enc = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(**enc, max_new_tokens=TASK_TOKENS, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def heldout_windows(tok, n_tokens: int) -> torch.Tensor:
    ids = tok(HELDOUT_TEXT.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:n_tokens]
    rows = [[tok.bos_token_id] + ids[i:i + WINDOW] for i in range(0, len(ids) - WINDOW + 1, WINDOW)]
    return torch.tensor(rows)


def quality(args: argparse.Namespace, tok, base: nn.Module) -> list[dict]:
    windows = heldout_windows(tok, args.ppl_tokens)
    tasks = make_tasks(args.per_cell * len(LEVELS) * 4, TASK_SEED)
    results, reference, fp32_answers = [], None, None
    for name in tqdm(args.variants, desc="variants"):
        model = build(name, base)
        start = time.perf_counter()
        ppl, agree, argmaxes = perplexity(model, windows, reference)
        texts = answers(model, tok, tasks)
        reference = reference or argmaxes
        fp32_answers = fp32_answers or texts
        by_level = defaultdict(list)
        for t, text in zip(tasks, texts):
            by_level[t.level].append(is_correct(t, text))
        results.append({
            "variant": name, "ppl": ppl, "token_agreement": agree,
            "answers_same_as_fp32": sum(a == b for a, b in zip(texts, fp32_answers)) / len(tasks),
            "accuracy": sum(map(sum, by_level.values())) / len(tasks),
            **{f"acc_L{lv}": sum(v) / len(v) for lv, v in sorted(by_level.items())},
            "linear_bytes": linear_bytes(model), "total_bytes": weight_bytes(model),
            "seconds": time.perf_counter() - start,
        })
        del model
    print(f"{windows.numel()} held-out tokens in {len(windows)} windows; {len(tasks)} tasks")
    return results


def time_us(paths: dict, reps: int) -> dict[str, list[float]]:
    """Microseconds per call of each path, one figure per round. Rounds interleave the paths so that load from other
    processes on this shared CPU falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for fn in paths.values():
        fn()
    for _ in range(ROUNDS):
        for name, fn in paths.items():
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - start) / reps * 1e6)
    return times


@torch.inference_mode()
def micro(shapes: list[tuple[int, int]], reps: int) -> list[list]:
    # One thread: with two on a shared two-core machine, a descheduled OpenMP worker stalls whole calls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    for (k, n) in shapes:
        linear = nn.Linear(k, n, bias=False)
        int8 = QuantLinear.from_linear(linear, "int8")
        int4 = QuantLinear.from_linear(linear, "int4", group_size=128)
        scales32 = int8.scales.float()
        for m in (1, 8):
            x = torch.randn(m, k)
            us = time_us({
                "nn.Linear": lambda: linear(x), "int8": lambda: int8(x), "int4 g128": lambda: int4(x),
                # torch's own CPU int8 weight-only kernel: the candidate fast path for int8 on CPU
                "int8 _weight_int8pack_mm": lambda: torch._weight_int8pack_mm(x, int8.qweight, scales32),
            }, reps)
            base = us.pop("nn.Linear")
            rows += [[f"{k}x{n}", m, name, spread(base, 1), spread(t, 1), spread([q / b for q, b in zip(t, base)])]
                     for name, t in us.items()]
    torch.set_num_threads(threads)
    return rows


def plot(results: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in results:
        ax.plot(LEVELS, [r[f"acc_L{lv}"] for lv in LEVELS], marker="o", label=f"{r['variant']} (ppl {r['ppl']:.2f})")
    ax.set_xlabel("task level")
    ax.set_ylabel("exact-match accuracy")
    ax.set_xticks(LEVELS)
    ax.set_title("models/large under weight-only quantization")
    ax.legend(fontsize=8)
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def write_csv(results: list[dict]) -> None:
    CSV.parent.mkdir(parents=True, exist_ok=True)
    with open(CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL, help="an HF checkpoint directory")
    parser.add_argument("--per-cell", type=int, default=10, help="tasks per family and level")
    parser.add_argument("--ppl-tokens", type=int, default=8192, help="held-out tokens for perplexity")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    parser.add_argument("--reps", type=int, default=20, help="calls per timing run in the micro-benchmark")
    parser.add_argument("--print-only", action="store_true", help="print the tables; write no docs")
    args = parser.parse_args()
    if args.variants[0] != "fp32":
        parser.error("the first variant must be fp32: the others are compared with it")
    torch.manual_seed(0)

    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    results = quality(args, tok, base)
    fp32 = results[0]
    quality_table = table(
        ["variant", "held-out ppl", "argmax = fp32", "answers = fp32", "exact match", *[f"L{lv}" for lv in LEVELS],
         "linear weights (MiB)", "vs fp32", "whole model (MiB)", "vs fp32"],
        [[r["variant"], f"{r['ppl']:.3f}", r["token_agreement"] if r is not fp32 else "-",
          r["answers_same_as_fp32"] if r is not fp32 else "-", r["accuracy"],
          *[r[f"acc_L{lv}"] for lv in LEVELS],
          r["linear_bytes"] / 2**20, r["linear_bytes"] / fp32["linear_bytes"],
          r["total_bytes"] / 2**20, r["total_bytes"] / fp32["total_bytes"]] for r in results])
    print(quality_table)

    shapes = sorted({(m.in_features, m.out_features) for _, m in quantizable_linears(base)} | {(4096, 4096)})
    micro_rows = micro(shapes, args.reps)
    micro_table = table(["K x N", "M", "path", "nn.Linear fp32 (us)", "quantized (us)", "time vs nn.Linear"], micro_rows)
    print(micro_table)

    if args.print_only:
        return
    write_csv(results)
    plot(results)
    n_tasks = args.per_cell * len(LEVELS) * 4
    n_params = sum(p.numel() for p in base.parameters()) / 1e6
    shown = args.model.resolve().relative_to(ROOT) if args.model.resolve().is_relative_to(ROOT) else args.model
    saved = json.loads((args.model / "config.json").read_text())
    stored = saved.get("dtype") or saved.get("torch_dtype") or "float32"
    training = args.model / "training.json"
    if training.is_file():
        # 'losses' has one entry per step of every run, earlier runs (`--init`) included
        stored += f"; {len(json.loads(training.read_text())['losses'])} training steps per its training.json"
    body = f"""
Weight-only quantization of `{shown}` ({n_params:.1f}M parameters, stored in {stored}):
every linear layer but `lm_head` becomes a `QuantLinear` (`backends/engine/quant`); embeddings, norms and
`lm_head` stay in the variant's float type (fp32 for the int rows; the fp32 row is the stored weights in fp32). int8: symmetric, one float16 scale per
output row. int4: asymmetric, a float16 scale and a 4-bit zero-point per output row and group of `g` input
columns, two codes per byte. Activations stay fp32 (bf16 for the bf16 row), except int8 on an x86 CPU: fbgemm's
int8 GEMM quantizes them on the fly, symmetric per row (8-bit on AVX-512 VNNI, else 7-bit), which is what its rows
here measure.

Perplexity on {args.ppl_tokens} tokens of held-out text (`models/heldout.txt`, windows of {WINDOW});
"argmax = fp32": share of those positions whose next-token argmax equals fp32's. Exact match on
{n_tasks} tasks (`classifier.tasks.make_tasks`, seed {TASK_SEED}, {args.per_cell} per family and level, greedy,
{TASK_TOKENS} new tokens); "answers = fp32": share of answers identical to fp32's. Memory: bytes of every
parameter and buffer (whole model), and of the quantized layers alone (linear weights), with ratios to fp32.

{quality_table}

![accuracy per level](img/quant_quality.png)

QuantLinear on this CPU at decode shapes (the large model's layers and a 4096x4096 layer of a 7B model),
time per call as a ratio to nn.Linear in fp32 measured in the same run (one thread, median (min-max) of {ROUNDS}
interleaved rounds of {args.reps} calls; the ratio is taken per round).
On CPU int8 runs fbgemm's int8 GEMM (per-row activation quantization around it); int4 runs the torch reference
path, which dequantizes the whole weight every call, so it is slower than fp32: the memory saving is the point
there, and its speed comes from the fused Triton kernel on a GPU.

{micro_table}
"""
    command = "bench/quant_quality.py" + (f" --model {shown}" if args.model.resolve() != MODEL else "")
    write_section("quant_quality", "Weight-only quantization: quality and memory", command, body)


if __name__ == "__main__":
    main()
