"""`ferryman router train|eval`: the gateway mounts this app; it imports nothing of the gateway."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from classifier.router import DEFAULT_PATH

router_app = typer.Typer(help="Train and evaluate the difficulty classifier that routes `model: auto`.",
                         no_args_is_help=True)


@router_app.command()
def train(
    ctx: typer.Context,
    labels: list[Path] = typer.Option(None, help="Label file(s): CSV `prompt, <model>_score, ...` (repeatable)"),
    from_ledger: bool = typer.Option(False, help="Add labels from tenants' feedback on their opted-in prompts"),
    out: Path = typer.Option(DEFAULT_PATH, help="Where to write the router artifact"),
    quality_floor: float = typer.Option(None, help="Default policy: keep this fraction of the strongest tier's quality"),
    large_share: float = typer.Option(None, help="Default policy: send at most this share of calls up a tier"),
    views: str = typer.Option("w,b,s,c", help="n-gram views: w words, b bigrams, s first word x length, c shape chars"),
    start: str = typer.Option(None, "--from", help="Fine-tune this artifact (`general` or a path) on the labels "
                                                    "instead of training from scratch; keeps its views"),
) -> None:
    """Fit the scorer and calibrate its policy tables, all cross-validated by task; save the artifact. With --from,
    start from an artifact's weights and move them toward the labels (classifier/tune.py)."""
    from classifier.features import VIEWS
    from classifier.labelfile import read_labels
    from classifier.train import DEFAULT_POLICY
    from classifier.train import train as fit
    from classifier.tune import fine_tune

    if quality_floor is not None and large_share is not None:
        raise typer.BadParameter("give at most one of --quality-floor and --large-share")
    labels = labels or []
    if not labels and not from_ledger:
        raise typer.BadParameter("give --labels FILE (repeatable), --from-ledger, or both")
    for path in labels:
        if not path.exists():
            raise typer.BadParameter(f"no label file at {path}")
    policy = ({"quality_floor": quality_floor} if quality_floor is not None
              else {"large_share": large_share} if large_share is not None else DEFAULT_POLICY)
    chosen = tuple(v.strip() for v in views.split(","))
    if not set(chosen) <= set(VIEWS):
        raise typer.BadParameter(f"--views takes some of {','.join(VIEWS)}")
    data = read_labels(*labels) if labels else None
    if from_ledger:
        # the gateway, which mounts this app, passes the reader: the classifier knows no database
        data = ctx.obj["ledger_labels"](data.tiers if data else None, data)
        typer.echo(f"{len(data.examples)} labelled prompts after adding the ledger's")
    trained_on = [p.name for p in labels] + (["ledger feedback"] if from_ledger else [])
    if start is None:
        router = fit(data, policy, views=chosen)
    else:
        try:
            router = fine_tune(_load(start), data, policy)
        except ValueError as exc:
            raise typer.BadParameter(f"--from {start}: {exc}")
        trained_on = [*router.meta["fine_tuned_from"], *trained_on]
        m = router.meta
        typer.echo(f"from {start}: APGR on the labels {m['apgr_prior']:.3f} as it was, {m['cv_apgr']:.3f} fine-tuned "
                   f"(cross-validated) at prior strength {m['prior_strength']}")
    router.meta["trained_on"] = trained_on
    router.save(out)
    m = router.meta
    typer.echo(f"router saved to {out}: {m['examples']} prompts in {m['groups']} groups, tiers {', '.join(m['tiers'])}; "
               f"ridge alpha {m['alpha']}, cross-validated APGR {m['cv_apgr']:.3f}, {len(router.weights)} n-gram weights")


@router_app.command("eval")
def evaluate_cmd(
    router_path: str = typer.Option("bundled", "--router", help="Router artifact: a path, or `general` / `bundled`"),
    labels: Path = typer.Option(..., help="Label file: every row is a test prompt (no split)"),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON line: apgr, cpt50, cpt80, auc, n"),
) -> None:
    """APGR, CPT(50%), CPT(80%) and AUC of the weakest vs the strongest tier over every row of the file."""
    from classifier.evaluate import figures, markdown_table
    from classifier.labelfile import read_labels

    router = _load(router_path)
    result = figures(router, read_labels(labels).examples)
    typer.echo(markdown_table(list(result), [list(result.values())]))
    if as_json:
        typer.echo(json.dumps(result))


def _load(path: str):
    from classifier.router import Router

    try:
        return Router.load(path)
    except FileNotFoundError as exc:
        raise typer.BadParameter(str(exc))


@router_app.command()
def label(
    ctx: typer.Context,
    group: str = typer.Option(..., help="Route group of the catalog whose tiers answer every prompt"),
    prompts: Path = typer.Option(..., exists=True, dir_okay=False,
                                 help='JSONL: {"prompt": ..., "reference": ...}; `reference` optional, `task` kept'),
    out: Path = typer.Option(..., help="Label CSV to append to; prompts already in it are skipped"),
    judge: str = typer.Option(None, help="Catalog model that grades answers 1-10 for prompts without a reference"),
    concurrency: int = typer.Option(4, min=1, help="Prompts in flight at once"),
    max_tokens: int = typer.Option(256, min=1, help="Answer length per call"),
    yes: bool = typer.Option(False, "--yes", help="Skip the cost confirmation"),
) -> None:
    """Ask every tier of a route group each prompt through the gateway (billed to the operator tenant) and write
    their scores: 1/0 against a reference (normalised exact match or whole-word containment), else the judge's."""
    # the gateway, which mounts this app, passes the labeller: the classifier knows no gateway
    ctx.obj["label"](group, prompts, out, judge, concurrency, max_tokens, yes)
