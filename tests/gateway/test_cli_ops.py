"""Start-up checks: `ferryman config check FILE` lists every problem of a catalog; `serve` refuses a taken port
before it loads anything."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FERRYMAN = str(Path(sys.executable).parent / "ferryman")


def test_config_check_lists_every_problem_and_passes_a_good_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - name: a\n    kind: openai\n    price: {input: -1, output: 2}\n"
                   "  - name: b\n    kind: nonsense\n")
    r = subprocess.run([FERRYMAN, "config", "check", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "models[0]" in r.stderr
    assert "models[1]" in r.stderr
    good = Path(__file__).resolve().parents[2] / "examples" / "bundled.yaml"
    r = subprocess.run([FERRYMAN, "config", "check", str(good)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{good}: ok (")


def test_serve_refuses_a_taken_port_before_loading_models_or_minting_keys(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = subprocess.run([FERRYMAN, "serve", "--port", str(port)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "FERRYMAN_DATABASE_URL": f"sqlite:///{tmp_path / 'l.db'}"})
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr
    assert "demo tenant API key" not in r.stdout
    assert not (tmp_path / "l.db").exists()  # nothing was started: no ledger, no demo key
