"""Labels from production: tenants' feedback on answers whose prompts they let us keep (`store_prompts`).

A label row needs every tier's score on one prompt, so a prompt counts only when each model of its route group
answered it and was graded (an escalated cascade, a tenant comparing tiers); a model's score is the mean of
its grades on that prompt. Rows come out in the label-file format `ferryman router train` reads.
"""
from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select

from billing.models import usage_records
from classifier.labelfile import Example, Labels


def ledger_labels(engine, tiers: tuple[str, ...]) -> Labels:
    """Prompts graded on every one of `tiers` (weakest first)."""
    r = usage_records.c
    query = select(r.prompt_text, r.model, r.feedback_score).where(
        r.prompt_text.is_not(None), r.feedback_score.is_not(None), r.model.in_(tiers))
    grades: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with engine.connect() as conn:
        for prompt, model, score in conn.execute(query):
            grades[prompt][model].append(score)
    examples = [Example(p, tuple(sum(g[t]) / len(g[t]) for t in tiers), "ledger", None, p)
                for p, g in grades.items() if all(g[t] for t in tiers)]
    return Labels(tiers, examples)


def for_training(tiers: tuple[str, ...] | None, labels: Labels | None) -> Labels:
    """`ferryman router train --from-ledger`: the ledger's labels for the given tiers (else those of the first
    router or cascade group: a pinned or fallback group has no tiers to compare), added to the label files' rows."""
    from billing import Billing
    from gateway.catalog import from_settings
    from gateway.config import Settings

    settings = Settings()
    tiers = tiers or tuple(next(g.tiers for g in from_settings(settings).routes if g.strongest()))
    found = ledger_labels(Billing(settings.database_url).engine, tiers)
    return Labels(tiers, (labels.examples if labels else []) + found.examples)
