"""`ferryman plan`: capacity planning with the engine's own scheduler on a simulated clock (backends.engine.capacity)."""
from __future__ import annotations

from pathlib import Path

import typer

plan_app = typer.Typer(help="Capacity planning: simulate a deployment, find the highest rate meeting an SLO.",
                       no_args_is_help=True)

MODEL = typer.Option("llama-3-70b", help="llama-3-70b | llama-3-8b | large | small | a checkpoint directory")
FORMAT = typer.Option("int8", "--format", help="Weight format: bf16 | int8 | int4")
GPU = typer.Option("h100-sxm", help="h100-sxm | h200 | a100 | l40s")
MIX = typer.Option("chat", help="Generated workload: chat | rag")
PRICE = typer.Option(3.0, help="USD per GPU-hour")
SEQS = typer.Option(256, help="Engine max_num_seqs")
BUDGET = typer.Option(2048, help="Engine max_num_batched_tokens (prefill chunk budget per step)")
SEED = typer.Option(0, help="Random seed of the generated workload (the same seed, the same requests)")


def _fail(message: str) -> None:
    typer.secho(message, fg="red", err=True)
    raise typer.Exit(1)


def _step_model(model: str, fmt: str, gpu: str, layout: str):
    from backends.engine.capacity.hardware import FORMAT_BYTES, GPUS, model_spec
    from backends.engine.capacity.step_time import Layout, StepModel

    if fmt not in FORMAT_BYTES or gpu not in GPUS:
        _fail(f"format must be one of {', '.join(FORMAT_BYTES)}; gpu one of {', '.join(GPUS)}")
    try:
        return StepModel(model_spec(model), fmt, GPUS[gpu], Layout.parse(layout))
    except ValueError as exc:
        _fail(str(exc))


def _table(headers: list[str], rows: list[list]) -> str:
    cells = [[f"{c:.3g}" if isinstance(c, float) and abs(c) < 1000 else f"{c:,.0f}" if isinstance(c, float) else str(c)
              for c in row] for row in rows]
    return "\n".join("| " + " | ".join(r) + " |" for r in [headers, ["---"] * len(headers), *cells])


@plan_app.command("simulate")
def simulate_cmd(model: str = MODEL, fmt: str = FORMAT, gpu: str = GPU,
                 layout: str = typer.Option("4x1x1", help="TPxPPxREPLICAS"), mix: str = MIX,
                 rate: float = typer.Option(10.0, help="Requests/s over the whole layout"),
                 duration: float = typer.Option(60.0, help="Seconds of arrivals"),
                 arrival: str = typer.Option("poisson", help="poisson | bursty"),
                 workload: Path = typer.Option(None, help="A JSONL workload file instead of a generated one"),
                 concurrency: int = typer.Option(None, help="Closed loop: this many clients, arrival times ignored"),
                 speculation: float = typer.Option(None, help="Model n-gram speculative decoding at this acceptance rate"),
                 prefix_caching: bool = typer.Option(True, "--prefix-caching/--no-prefix-caching",
                                                     help="Model the engine's prefix cache (shared prompt blocks)"),
                 max_num_seqs: int = SEQS, max_num_batched_tokens: int = BUDGET,
                 gpu_hour_price: float = PRICE, seed: int = SEED) -> None:
    """Run one workload through one deployment: latency per class, throughput, KV usage, cost."""
    from backends.engine.capacity import workload as wl
    from backends.engine.capacity.plan import gpu_second_price
    from backends.engine.capacity.simulator import ROW_HEADERS, EngineKnobs, Speculation, simulate

    step_model = _step_model(model, fmt, gpu, layout)
    if mix not in wl.MIXES:
        _fail(f"mix must be one of {', '.join(wl.MIXES)}")
    requests = wl.load(workload) if workload else wl.generate(wl.MIXES[mix], rate, duration, seed, arrival)
    knobs = EngineKnobs(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                        enable_prefix_caching=prefix_caching,
                        speculation=Speculation(speculation) if speculation else None)
    try:
        result = simulate(requests, step_model, knobs, seed, concurrency)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"{step_model.model.name} {fmt} on {step_model.layout} x {step_model.hardware.name}: "
               f"{len(requests)} requests, {step_model.kv_capacity_tokens():,} KV tokens per replica")
    typer.echo(_table(ROW_HEADERS, result.rows()))
    gpu_s = sum(r.gpu_seconds for r in result.records) / max(len(requests), 1)
    per_token = step_model.layout.gpus * gpu_hour_price / 3600 * result.end / max(result.output_tokens, 1) * 1e6
    typer.echo(f"\noutput tokens/s {result.tokens_per_s:,.0f}; KV usage mean {sum(result.kv_usage) / len(result.kv_usage):.0%}, "
               f"max {result.kv_usage_max:.0%}; preemptions {result.preemptions}; prefix hit rate "
               f"{result.prefix_hit_rate:.0%}; cut off unfinished {result.unfinished}"
               f"{' (overloaded: the queue grew without bound)' if result.overloaded else ''}")
    typer.echo(f"cost at ${gpu_hour_price}/GPU-hour: ${per_token:.3f} per 1M output tokens (all GPUs for the whole run); "
               f"per GPU-second ${gpu_second_price(gpu_hour_price):.6f} x {gpu_s:.3f} GPU-s per request "
               f"= ${gpu_s * gpu_second_price(gpu_hour_price) * 1e3:.3f} per 1k requests (busy time only)")


@plan_app.command("capacity")
def capacity_cmd(model: str = MODEL, fmt: str = FORMAT, gpu: str = GPU,
                 layouts: str = typer.Option("2x1,4x1,8x1", help="Comma-separated TPxPP of one replica"),
                 mix: str = MIX, slo_ttft_ms: float = typer.Option(500.0, help="p95 time to first token"),
                 slo_itl_ms: float = typer.Option(None, help="p95 inter-token latency (optional)"),
                 target_rate: float = typer.Option(None, help="Requests/s to plan GPUs for"),
                 duration: float = typer.Option(30.0, help="Seconds of arrivals per trial"),
                 max_num_seqs: int = SEQS, max_num_batched_tokens: int = BUDGET, gpu_hour_price: float = PRICE,
                 png: Path = typer.Option(None, help="Write the latency-vs-load curves here")) -> None:
    """The highest request rate meeting the SLO, per layout; GPUs for a target rate; cost per 1M tokens."""
    from backends.engine.capacity import workload as wl
    from backends.engine.capacity.plan import SLO, max_rate
    from backends.engine.capacity.simulator import EngineKnobs

    if mix not in wl.MIXES:
        _fail(f"mix must be one of {', '.join(wl.MIXES)}")
    slo = SLO(slo_ttft_ms / 1e3, slo_itl_ms / 1e3 if slo_itl_ms else None)
    knobs = EngineKnobs(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)
    rows, curves = [], []
    for text in layouts.split(","):
        step_model = _step_model(model, fmt, gpu, text)
        if step_model.kv_capacity_tokens() < 1:
            rows.append([str(step_model.layout), "does not fit", "", "", "", ""])
            continue
        cap = max_rate(wl.MIXES[mix], step_model, slo, knobs, duration=duration)
        per_out, per_all = cap.cost_per_million(gpu_hour_price)
        need = -(-target_rate // (cap.max_rate / step_model.layout.replicas)) * step_model.layout.gpus_per_replica \
            if target_rate and cap.max_rate else "-"
        rows.append([str(step_model.layout), cap.max_rate, cap.max_rate / step_model.layout.gpus, need, per_out, per_all])
        curves.append((str(step_model.layout), cap))
    typer.echo(_table(["layout", "max req/s", "req/s per GPU", f"GPUs for {target_rate or '-'} req/s",
                       "USD/1M out tokens", "USD/1M tokens in+out"], rows))
    if png:
        from backends.engine.capacity.plan import plot_curves

        plot_curves(curves, slo, png, f"{model} {fmt} on {gpu}, {mix} mix")
        typer.echo(f"wrote {png}")


@plan_app.command("workload")
def workload_cmd(mix: str = MIX, rate: float = typer.Option(10.0, help="Requests/s"),
                 duration: float = typer.Option(60.0, help="Seconds of arrivals"),
                 arrival: str = typer.Option("poisson", help="poisson | bursty"), seed: int = SEED,
                 out: Path = typer.Option(..., help="JSONL file to write")) -> None:
    """Write a generated workload to a file (edit it, or bring your own in the same format)."""
    from backends.engine.capacity import workload as wl

    if mix not in wl.MIXES:
        _fail(f"mix must be one of {', '.join(wl.MIXES)}")
    requests = wl.generate(wl.MIXES[mix], rate, duration, seed, arrival)
    wl.save(requests, out)
    typer.echo(f"wrote {len(requests)} requests to {out}")
