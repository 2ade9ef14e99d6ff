"""README's commands work as written (issue 19, point 8).

Each fenced block is run, or checked where running it here would make no sense:
- `bash` blocks of `ferryman` commands run line by line with the venv on PATH, against a ledger of the test's
  own; a `serve` line starts a real process (the real engines), which must become ready and, on SIGTERM, drain
  and exit 0. Only the ports differ from the text (free ones, so parallel runs cannot collide).
- the `python` block runs against that `ferryman serve`, with the API key the server printed.
- the set-up block is exactly `make serve` / `make test` (CI runs `make test`; `make -n` checks both targets).
- `yaml` blocks are model catalogs: they must load.
- the settings table: every variable is a setting, and every value it mentions is accepted.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.catalog import load
from gateway.config import Settings
from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


class Background:
    """A long-running README line: its output collected, its readiness awaited, stopped with SIGTERM."""

    def __init__(self, command: str, env: dict, health_url: str):
        self.command, self.lines = command, []
        self.process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()
        self.health_url = health_url

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            assert self.process.poll() is None, f"{self.command} exited: {''.join(self.lines)}"
            try:
                if httpx.get(self.health_url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"{self.command} did not become ready: {''.join(self.lines)}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def test_set_up_is_the_two_make_commands():
    [setup] = [b for b in blocks("bash") if b.startswith("make ")]
    assert [line.split("#")[0].strip() for line in setup.strip().splitlines()] == ["make serve", "make test"]
    dry = subprocess.run(["make", "-n", "serve", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0
    assert "ferryman serve" in dry.stdout
    assert "pytest" in dry.stdout


@pytest.mark.slow
def test_operator_commands_and_the_python_client_run_as_written(tmp_path):
    [cli] = [b for b in blocks("bash") if b.startswith("ferryman ")]
    [client] = blocks("python")
    gateway_port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "FERRYMAN_PORT": str(gateway_port),
           "FERRYMAN_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}"}
    running: list[Background] = []
    try:
        for line in (line.split("#")[0].strip() for line in cli.strip().splitlines()):
            if line.endswith(" serve") or " serve " in line:
                port = re.search(r"--port (\d+)", line)
                line = line.replace(port.group(0), f"--port {(port := free_port())}") if port else line
                running.append(Background(line, env, f"http://127.0.0.1:{port or gateway_port}/health"))
                continue
            done = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            if line.startswith("ferryman keys create"):
                assert re.search(r"fm-[\w-]{20,}", done.stdout), done.stdout
        for process in running:
            process.wait_ready()

        gateway = running[0]
        assert "ferryman serve" in gateway.command
        key = re.search(r"demo tenant API key:\s+(\S+)", "".join(gateway.lines)).group(1)
        code = client.replace("127.0.0.1:8000", f"127.0.0.1:{gateway_port}").replace('"fm-..."', repr(key))
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert done.stdout.strip(), (done.stdout, done.stderr)

        for process in running:  # a rolling restart: SIGTERM drains and exits 0
            assert process.stop() == 0, "".join(process.lines)
    finally:
        for process in running:
            process.kill()


def test_catalog_examples_load(tmp_path, monkeypatch):
    for i, text in enumerate(blocks("yaml")):
        for variable in re.findall(r"api_key_env: (\w+)", text):  # the operator's secret, set in their shell
            monkeypatch.setenv(variable, "sk-test")
        path = tmp_path / f"catalog{i}.yaml"
        path.write_text(text)
        assert load(path).models


def settings_table() -> list[tuple[str, list[str]]]:
    rows = re.findall(r"^\| `(FERRYMAN_\w+)` \| ([^|]*) \| ([^|]*) \|$", README, re.M)
    return [(name, re.findall(r"`([^`]+)`", default + " " + meaning)) for name, default, meaning in rows]


def test_the_table_lists_every_setting():
    listed = {name for name, _ in settings_table()}
    assert sorted(f"FERRYMAN_{field.upper()}" for field in Settings.model_fields if
                  f"FERRYMAN_{field.upper()}" not in listed) == []


def test_every_setting_in_the_table_exists_and_takes_the_values_it_names(monkeypatch):
    table = settings_table()
    assert len(table) >= 8
    for name, values in table:
        field = name.removeprefix("FERRYMAN_").lower()
        assert field in Settings.model_fields, name
        for value in values:
            if value.startswith("FERRYMAN_") or " " in value:
                continue  # another variable's name, or a command
            monkeypatch.setenv(name, value)
            Settings()  # raises when README names a value the code refuses
        monkeypatch.delenv(name, raising=False)
