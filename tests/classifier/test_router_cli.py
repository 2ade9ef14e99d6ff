import csv
from dataclasses import asdict

from typer.testing import CliRunner

from classifier.cli import router_app
from classifier.router import Router


def test_train_then_eval_from_a_labels_file(tmp_path, make_examples):
    labels, out = tmp_path / "labels.csv", tmp_path / "router.npz"
    rows = [asdict(e) | {"label": int(e.label)} for e in make_examples(1500, seed=2)]
    with open(labels, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    runner = CliRunner()
    trained = runner.invoke(router_app, ["train", "--labels", str(labels), "--out", str(out), "--large-share", "0.4"])
    assert trained.exit_code == 0, trained.output
    assert Router.load(out).meta["default_policy"] == {"large_share": 0.4}
    evaluated = runner.invoke(router_app, ["eval", "--labels", str(labels), "--router", str(out)])
    assert evaluated.exit_code == 0, evaluated.output
    assert "| classifier |" in evaluated.output and "large_share = 0.5" in evaluated.output


def test_train_without_labels_says_how_to_make_them(tmp_path):
    result = CliRunner().invoke(router_app, ["train", "--labels", str(tmp_path / "none.csv")])
    assert result.exit_code != 0
    assert "--relabel" in result.output
