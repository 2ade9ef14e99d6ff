"""`ferryman plan`: the simulator from the command line."""
from __future__ import annotations

from typer.testing import CliRunner

from gateway.cli import app


def test_plan_simulate_and_workload_file(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["plan", "workload", "--mix", "chat", "--rate", "4", "--duration", "3", "--out", str(tmp_path / "w.jsonl")])
    assert out.exit_code == 0, out.output
    n = len((tmp_path / "w.jsonl").read_text().splitlines())
    out = runner.invoke(app, ["plan", "simulate", "--model", "llama-3-8b", "--format", "int4", "--layout", "1x1x2",
                              "--workload", str(tmp_path / "w.jsonl")])
    assert out.exit_code == 0, out.output
    assert f"{n} requests" in out.output and "| all | " in out.output and "per 1M output tokens" in out.output


def test_plan_rejects_what_does_not_fit_or_exist():
    runner = CliRunner()
    out = runner.invoke(app, ["plan", "simulate", "--format", "bf16", "--gpu", "l40s", "--layout", "1x1x1", "--duration", "1"])
    assert out.exit_code == 1 and "does not fit" in out.output
    out = runner.invoke(app, ["plan", "simulate", "--gpu", "tpu", "--duration", "1"])
    assert out.exit_code == 1 and "gpu one of" in out.output
    out = runner.invoke(app, ["plan", "simulate", "--layout", "0x1", "--duration", "1"])
    assert out.exit_code == 1 and "TPxPPxREPLICAS" in out.output
