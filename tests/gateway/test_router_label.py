"""`ferryman router label`: every tier of a route group answers each prompt through the gateway's Ferry, billed to
the operator tenant; the scores land in a label CSV that a rerun resumes."""
import csv
import json
import random

import pytest
from typer.testing import CliRunner

from billing import Billing
from classifier.labelfile import read_labels
from classifier.tasks import make_task
from gateway.cli import app
from gateway.labeling import OPERATOR, judge_score, reference_score

TIERS = ("ferryman-small", "ferryman-large")


def test_reference_and_judge_scores():
    assert reference_score("P i h s.", "p i h s") == 1.0
    assert reference_score("the answer is p i h s", "p i h s") == 1.0
    assert reference_score("12345", "234") == 0.0  # containment is by whole words
    assert reference_score("", "") == 0.0
    assert judge_score("Rating: [[10]]") == 1.0
    assert judge_score("[[1]]") == 0.0
    assert judge_score("no rating") is None
    assert judge_score("[[11]]") is None


@pytest.mark.slow
def test_label_writes_one_row_per_prompt_bills_the_operator_and_resumes(tmp_path):
    rng = random.Random(3)
    tasks = [make_task(family, 1, rng) for family in ("reverse", "copy", "add")]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t.prompt, "reference": t.answer, "task": t.family}) + "\n"
                               for t in tasks))
    out, url = tmp_path / "labels.csv", f"sqlite:///{tmp_path / 'ledger.db'}"
    args = ["router", "label", "--group", "auto", "--prompts", str(prompts), "--out", str(out), "--max-tokens", "8",
            "--concurrency", "2", "--yes"]
    env = {"FERRYMAN_DATABASE_URL": url, "FERRYMAN_CONFIG": None}

    first = CliRunner().invoke(app, args, env=env)
    assert first.exit_code == 0, first.output
    assert "3 prompts x 2 tiers" in first.output
    assert "3 rows added" in first.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["prompt"] for r in rows) == sorted(t.prompt for t in tasks)
    for row in rows:
        assert {row[m + "_score"] for m in TIERS} <= {"0.0", "1.0"}
    assert set(read_labels(out).tiers) == set(TIERS)

    again = CliRunner().invoke(app, args, env=env)
    assert again.exit_code == 0, again.output
    assert "0 prompts x 2 tiers (3 already in" in again.output
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 3

    billing = Billing(url)
    records = billing.usage(billing.tenant_by_name(OPERATOR)["id"])
    assert len(records) == len(tasks) * len(TIERS)
    assert sorted(r["model"] for r in records) == sorted(TIERS * len(tasks))
    assert all(r["status"] == "ok" and r["route_group"] == "auto" for r in records)
