"""`ferryman router train --from-ledger`: labels from feedback on prompts of tenants that opted in."""
import httpx
import pytest

from gateway.ledger_labels import ledger_labels

TIERS = ("ferryman-small", "ferryman-large")


def ask(gw, key, model, prompt, score):
    r = httpx.post(f"{gw.url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": model, "prompt": prompt, "max_tokens": 2})
    assert r.status_code == 200, r.text
    f = httpx.post(f"{gw.url}/v1/feedback", headers={"Authorization": f"Bearer {key}"},
                   json={"request_id": r.headers["x-request-id"], "score": score})
    assert f.status_code == 200, f.text


def test_prompts_graded_on_every_tier_become_label_rows(gateway):
    gateway.billing.update_tenant(gateway.tenant_id, store_prompts=True)
    private = gateway.billing.create_tenant("private")  # did not opt in: its prompts are never kept
    private_key, _ = gateway.billing.create_key(private["id"], "k")
    for key in (gateway.api_key, private_key):
        ask(gateway, key, "ferryman-small", "what is 2+2", 0.0)
        ask(gateway, key, "ferryman-large", "what is 2+2", 1.0)
    ask(gateway, gateway.api_key, "ferryman-large", "what is 2+2", 0.5)  # grades of one model average
    ask(gateway, gateway.api_key, "ferryman-small", "graded on one tier only", 1.0)
    labels = ledger_labels(gateway.billing.engine, TIERS)
    assert labels.tiers == TIERS
    assert [(e.prompt, e.scores) for e in labels.examples] == [("what is 2+2", (0.0, 0.75))]


@pytest.mark.slow
def test_train_from_ledger_adds_the_ledgers_rows_to_the_label_files(gateway, tmp_path):
    from typer.testing import CliRunner

    from classifier.router import Router
    from gateway.cli import app
    from tests.classifier.conftest import synthetic_labels
    from classifier.labelfile import Labels, write_labels

    gateway.billing.update_tenant(gateway.tenant_id, store_prompts=True)
    ask(gateway, gateway.api_key, "ferryman-small", "add 12 34", 1.0)
    ask(gateway, gateway.api_key, "ferryman-large", "add 12 34", 1.0)
    files = synthetic_labels(300, seed=7)
    write_labels(Labels(TIERS, files.examples), tmp_path / "l.csv")
    env = {"FERRYMAN_DATABASE_URL": gateway.billing.engine.url.render_as_string(hide_password=False)}
    out = tmp_path / "r.npz"
    result = CliRunner().invoke(app, ["router", "train", "--labels", str(tmp_path / "l.csv"), "--from-ledger",
                                      "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert "301 labelled prompts" in result.output
    assert Router.load(out).meta["examples"] == 301
