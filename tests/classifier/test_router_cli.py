import json

from typer.testing import CliRunner

from classifier.cli import router_app
from classifier.labelfile import write_labels
from classifier.router import Router


def test_train_then_eval_json(tmp_path, make_labels):
    first, second, test, out = (tmp_path / n for n in ("a.csv", "b.csv", "test.csv", "router.npz"))
    write_labels(make_labels(700, seed=2), first)
    write_labels(make_labels(700, seed=3), second)
    write_labels(make_labels(500, seed=4), test)
    runner = CliRunner()
    trained = runner.invoke(router_app, ["train", "--labels", str(first), "--labels", str(second), "--out", str(out),
                                         "--large-share", "0.4"])
    assert trained.exit_code == 0, trained.output
    router = Router.load(out)
    assert router.meta["default_policy"] == {"large_share": 0.4} and router.meta["examples"] == 1400
    evaluated = runner.invoke(router_app, ["eval", "--router", str(out), "--labels", str(test), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.output.strip().splitlines()[-1])
    assert list(figures) == ["apgr", "cpt50", "cpt80", "auc", "n"]
    assert figures["n"] == 500 and figures["apgr"] > 0.6 and figures["cpt50"] < 0.45


def test_eval_takes_a_shipped_name_and_refuses_a_missing_one(tmp_path, make_labels):
    write_labels(make_labels(200, seed=5), tmp_path / "t.csv")
    runner = CliRunner()
    named = runner.invoke(router_app, ["eval", "--router", "bundled", "--labels", str(tmp_path / "t.csv"), "--json"])
    assert named.exit_code == 0, named.output
    assert json.loads(named.output.strip().splitlines()[-1])["n"] == 200
    missing = runner.invoke(router_app, ["eval", "--router", str(tmp_path / "no.npz"), "--labels", str(tmp_path / "t.csv")])
    assert missing.exit_code != 0 and "router train" in missing.output


def test_train_without_labels_is_refused(tmp_path):
    result = CliRunner().invoke(router_app, ["train", "--labels", str(tmp_path / "none.csv")])
    assert result.exit_code != 0
    assert "no label file" in result.output
