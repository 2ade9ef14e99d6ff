"""`ferryman router train|eval`: the gateway mounts this app; it imports nothing of the gateway."""
from __future__ import annotations

from pathlib import Path

import typer

from classifier.router import DEFAULT_PATH, Router

router_app = typer.Typer(help="Train and evaluate the difficulty classifier that routes `model: auto`.",
                         no_args_is_help=True)

LABELS = Path(__file__).resolve().parent / "artifacts" / "labels.csv"


@router_app.command()
def train(
    labels: Path = typer.Option(LABELS, help="Labelled prompts (CSV); made from the model pair with --relabel"),
    out: Path = typer.Option(DEFAULT_PATH, help="Where to write the router artifact"),
    relabel: bool = typer.Option(False, help="Run both bundled models to make the labels afresh (minutes of CPU)"),
    tasks: int = typer.Option(3000, help="With --relabel: checkable task prompts"),
    texts: int = typer.Option(600, help="With --relabel: free-text prompts"),
    quality_floor: float = typer.Option(None, help="Default policy: keep this fraction of the all-large quality"),
    large_share: float = typer.Option(None, help="Default policy: send at most this share of calls large"),
) -> None:
    """Fit the classifier on the train split, calibrate thresholds on the calib split, save the artifact."""
    from classifier.train import DEFAULT_POLICY, read_labels
    from classifier.train import train as fit

    if quality_floor is not None and large_share is not None:
        raise typer.BadParameter("give at most one of --quality-floor and --large-share")
    if relabel:
        from classifier.labels import Pair, label_tasks, label_texts, write_labels

        pair = Pair()
        write_labels(label_tasks(pair, tasks) + label_texts(pair, texts), labels)
        typer.echo(f"labels written to {labels}")
    if not labels.exists():
        raise typer.BadParameter(f"no labels at {labels}; pass --relabel to make them from the models")
    policy = ({"quality_floor": quality_floor} if quality_floor is not None
              else {"large_share": large_share} if large_share is not None else DEFAULT_POLICY)
    router = fit(read_labels(labels), policy)
    router.save(out)
    typer.echo(f"router saved to {out}: {router.meta['examples']}, C={router.meta['C']}, "
               f"cv AUC {router.meta['cv_auc']:.3f}, {len(router.weights)} n-gram weights")


@router_app.command("eval")
def evaluate_cmd(
    labels: Path = typer.Option(LABELS, help="Labelled prompts (CSV); only the test split is used"),
    router_path: Path = typer.Option(DEFAULT_PATH, "--router", help="Router artifact to evaluate"),
) -> None:
    """APGR, CPT(50%), CPT(80%) and AUC on the test split, and whether calibrated targets hold there."""
    from classifier.evaluate import HEADERS, evaluate, markdown_table, policy_rows
    from classifier.train import read_labels, splits

    router = Router.load(router_path)
    test = splits(read_labels(labels))["test"]
    typer.echo(markdown_table(HEADERS, [r.row() for r in evaluate(router, test)]))
    targets = [{"large_share": s} for s in (0.2, 0.5)] + [{"quality_floor": q} for q in (0.9, 0.95)]
    typer.echo(markdown_table(["target", "large share on test", "quality / all-large"],
                              policy_rows(router, test, targets)))
