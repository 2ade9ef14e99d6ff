"""Admin keys and the audit log from the command line, and the bootstrap admin key of `ferryman serve`: minted once
into the ledger (hashed), printed only then, the same key on every later start; a key set in FERRYMAN_ADMIN_KEY is
never printed."""
import csv
import getpass
import io
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
from typer.testing import CliRunner

from billing import Billing
from billing.audit import Actor
from gateway.cli import app
from tests.harness import free_port

FERRYMAN = Path(sys.executable).parent / "ferryman"


def test_admin_keys_and_the_audit_log_from_the_command_line(sqlite_url):
    runner = CliRunner()

    def ferryman(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, "--database-url", sqlite_url])
        assert result.exit_code == code, result.output
        return result.output

    secret = ferryman("admin-keys", "create", "frank", "--role", "finance").split()[-1]
    assert "for olga (operator): fm-admin-" in ferryman("admin-keys", "create", "olga", "--role", "operator")
    assert "role must be one of admin, operator, finance" in ferryman("admin-keys", "create", "x", "--role", "root",
                                                                       code=1)
    assert "already exists" in ferryman("admin-keys", "create", "frank", "--role", "admin", code=1)
    billing = Billing(sqlite_url)
    assert billing.admins.authenticate(secret) == Actor("frank", "finance")
    listed = ferryman("admin-keys", "list")
    assert "frank" in listed
    assert secret not in listed
    assert "revoked" in ferryman("admin-keys", "revoke", "frank")
    assert "revoked" in ferryman("admin-keys", "revoke", "2")  # olga, by id
    assert "no admin key" in ferryman("admin-keys", "revoke", "nobody", code=1)
    assert billing.admins.authenticate(secret) is None

    ferryman("tenants", "create", "acme", "--rpm", "60")
    ferryman("tenants", "update", "acme", "--rpm", "90")
    me = f"cli:{getpass.getuser()}"
    table = ferryman("audit", "--action", "tenant")
    assert re.search(rf"{re.escape(me)}\s+admin\s+tenant.update\s+tenant:1\s+{{\"rpm\": 60}}\s+{{\"rpm\": 90}}", table)
    rows = list(csv.DictReader(io.StringIO(ferryman("audit", "--format", "csv", "--actor", me))))
    assert [r["action"] for r in rows] == ["admin_key.create", "admin_key.create", "admin_key.revoke",
                                           "admin_key.revoke", "tenant.create", "tenant.update"]
    assert ferryman("audit", "--action", "price", "--actor", me).strip().splitlines()[1:] == []
    billing.close()


def _serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, str, str]:
    """One `ferryman serve` start (a catalog with no engine, so it starts fast): its banner, and its URL once ready;
    stopped with SIGTERM when the caller's check returns."""
    (tmp_path / "catalog.yaml").write_text("models:\n  - name: up\n    kind: openai\n    base_url: http://127.0.0.1:9/v1\n"
                                           "    price: {input: 1.0, cached_input: 0.5, output: 2.0}\n")
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    environment.update(PYTHONUNBUFFERED="1", FERRYMAN_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}", **env)
    process = subprocess.Popen([str(FERRYMAN), "serve", "--port", str(port), "--config", str(tmp_path / "catalog.yaml")],
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    deadline = time.time() + 180
    while not any("demo tenant API key" in line for line in lines):
        assert process.poll() is None, "".join(lines)
        assert time.time() < deadline, "".join(lines)
        time.sleep(0.2)
    return process, "".join(lines), f"http://127.0.0.1:{port}"


def _stop(process) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0


def _me(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}/admin/me", headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.mark.slow
def test_serve_mints_the_admin_key_once_and_never_prints_one_it_was_given(tmp_path):
    process, banner, url = _serve(tmp_path)
    try:
        minted = re.search(r"admin key:\s+(fm-admin-\S+)\s+\(new: shown this once", banner).group(1)
        assert _me(url, minted).json() == {"name": "bootstrap", "role": "admin"}
    finally:
        _stop(process)

    process, banner, url = _serve(tmp_path)  # the same ledger: the same key, not printed again
    try:
        assert "fm-admin-" not in banner
        assert "as printed at the first start" in banner
        assert _me(url, minted).json() == {"name": "bootstrap", "role": "admin"}
    finally:
        _stop(process)

    given = "fm-admin-set-by-the-operator"
    process, banner, url = _serve(tmp_path, FERRYMAN_ADMIN_KEY=given)
    try:
        assert given not in banner
        assert "admin key:             FERRYMAN_ADMIN_KEY" in banner
        assert _me(url, given).json() == {"name": "env:FERRYMAN_ADMIN_KEY", "role": "admin"}
        assert _me(url, minted).json()["name"] == "bootstrap"  # the people's keys keep working beside it
    finally:
        _stop(process)
    billing = Billing(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert [k["name"] for k in billing.admins.list()] == ["bootstrap"]
    billing.close()
