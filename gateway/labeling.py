"""`ferryman router label`: label prompts by asking every tier of a route group and scoring the answers.

Each call goes through the gateway's own Ferry (admit, run, settle) as the operator tenant, so labelling is rate
limited, budgeted and recorded in the ledger like any tenant's traffic. A prompt line with a `reference` is scored
1/0 (the normalised reference equals the answer or appears in it as whole words); without one, a judge model of the
catalog grades the answer 1-10 with a written rubric (as MT-Bench's single-answer grading), mapped to [0, 1].
"""
from __future__ import annotations

import asyncio
import csv
import json
import re
from pathlib import Path

import typer
from tqdm import tqdm

from gateway.config import Settings
from gateway.errors import APIError
from gateway.policies import Plan
from gateway.schemas import ChatCompletionRequest

OPERATOR = "ferryman-operator"
RUBRIC = ("Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
          "the user question below. Consider helpfulness, relevance, accuracy, depth and level of detail. Be as "
          "objective as possible. Rate the response on a scale of 1 to 10 by strictly following this format: "
          "\"Rating: [[5]]\".\n\n[Question]\n{prompt}\n\n[The Start of Assistant's Answer]\n{answer}\n"
          "[The End of Assistant's Answer]")
JUDGE_MAX_TOKENS = 256


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def reference_score(answer: str, reference: str) -> float:
    ref, ans = normalised(reference), normalised(answer)
    return float(bool(ref) and (ref == ans or f" {ref} " in f" {ans} "))


def judge_score(verdict: str) -> float | None:
    """A 1-10 rating `[[n]]` mapped to [0, 1]; None when the judge gave none."""
    found = re.search(r"\[\[(\d+(?:\.\d+)?)\]\]", verdict)
    return None if found is None or not 1 <= float(found[1]) <= 10 else (float(found[1]) - 1) / 9


def operator_principal(billing):
    """The operator tenant (created on first use) and a key that lapses in a day: labelling is billed to it."""
    from datetime import timedelta

    try:
        tenant = billing.tenant_by_name(OPERATOR)
    except LookupError:
        tenant = billing.create_tenant(OPERATOR, internal=True)  # our cost, reported apart from customers
    key, _ = billing.create_key(tenant["id"], "router-label", expires_at=billing.clock() + timedelta(days=1))
    return billing.authenticate(key)


class Labeller:
    def __init__(self, ferry, principal, group, judge: str | None, max_tokens: int):
        self.ferry, self.principal, self.group, self.judge, self.max_tokens = ferry, principal, group, judge, max_tokens

    def body(self, model: str, prompt: str, max_tokens: int) -> ChatCompletionRequest:
        return ChatCompletionRequest(model=model, messages=[{"role": "user", "content": prompt}],
                                     max_tokens=max_tokens, temperature=0)

    async def ask(self, model: str, prompt: str, max_tokens: int) -> str:
        body, served = self.body(model, prompt, max_tokens), self.ferry.models[model]
        plan = Plan(self.group.name, (model,))  # labelling chooses no tier to save: no savings baseline
        ticket = await self.ferry.admit(self.principal, body, served, served.prompt(body), plan, "label")
        return "".join([delta.text async for delta in self.ferry.run(ticket)])

    async def score(self, line: dict, model: str) -> float | None:
        answer = await self.ask(model, line["prompt"], self.max_tokens)
        if "reference" in line:
            return reference_score(answer, str(line["reference"]))
        verdict = await self.ask(self.judge, RUBRIC.format(prompt=line["prompt"], answer=answer), JUDGE_MAX_TOKENS)
        return judge_score(verdict)

    async def row(self, line: dict) -> list | None:
        scores = [await self.score(line, model) for model in self.group.tiers]
        if None in scores:
            tqdm.write(f"{line['prompt'][:40]!r}: the judge gave no [[rating]]")
            return None
        return [line["prompt"], *scores, line.get("task", "")]

    def estimate_usd(self, lines: list[dict]) -> float:
        """Every prompt to every tier, each generating max tokens, at the catalog's prices (plus the judge's calls)."""
        micros = 0
        for line in lines:
            for model in self.group.tiers:
                tokens = self.ferry.models[model].prompt(self.body(model, line["prompt"], 1)).tokens
                micros += self.ferry.billing.cost_micros(model, tokens, 0, self.max_tokens)
                if "reference" not in line:
                    judged = self.ferry.models[self.judge].prompt(self.body(self.judge, RUBRIC, 1)).tokens
                    micros += self.ferry.billing.cost_micros(self.judge, judged + tokens + self.max_tokens, 0,
                                                             JUDGE_MAX_TOKENS)
        return micros / 1e6


def read_prompts(path: Path) -> list[dict]:
    lines = [json.loads(text) for text in path.read_text().splitlines() if text.strip()]
    if bad := next((i for i, line in enumerate(lines, 1) if not isinstance(line.get("prompt"), str)), None):
        raise typer.BadParameter(f"{path} line {bad}: each line needs a string `prompt`")
    return lines


def done_prompts(out: Path, header: list[str]) -> set[str]:
    """Prompts the file already labels (a rerun resumes after them); a new file gets its header."""
    if not out.exists() or out.stat().st_size == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            csv.writer(f).writerow(header)
        return set()
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != header:
            raise typer.BadParameter(f"{out} has columns {reader.fieldnames}, this group's are {header}")
        return {row["prompt"] for row in reader}


async def label_all(labeller: Labeller, lines: list[dict], out: Path, concurrency: int) -> tuple[int, int]:
    """(rows written, prompts left unlabelled). Rows are appended and flushed as they finish."""
    gate, written, failed = asyncio.Semaphore(concurrency), 0, 0

    async def one(line):
        async with gate:
            try:
                return await labeller.row(line)
            except APIError as exc:
                tqdm.write(f"{line['prompt'][:40]!r}: {exc.message}")

    with open(out, "a", newline="") as f, tqdm(total=len(lines), desc="labelling", unit="prompt") as bar:
        writer = csv.writer(f)
        for row in asyncio.as_completed([one(line) for line in lines]):
            row = await row
            if row is None:
                failed += 1
            else:
                writer.writerow(row)
                f.flush()
                written += 1
            bar.update()
    return written, failed


def label(group: str, prompts: Path, out: Path, judge: str | None, concurrency: int, max_tokens: int,
          yes: bool) -> None:
    """`ferryman router label`: see the module's docstring."""
    asyncio.run(_label(group, prompts, out, judge, concurrency, max_tokens, yes))


async def _label(group_name, prompts, out, judge, concurrency, max_tokens, yes) -> None:
    from gateway.app import build_ferry

    ferry = build_ferry(Settings())
    group = ferry.catalog.route(group_name)
    if group is None:
        raise typer.BadParameter(f"no route group named {group_name!r} in the catalog")
    lines = read_prompts(prompts)
    if judge not in (None, *ferry.models) or (judge is None and any("reference" not in x for x in lines)):
        raise typer.BadParameter("prompts without a `reference` need --judge, a model of the catalog")
    seen = done_prompts(out, ["prompt", *(m + "_score" for m in group.tiers), "task"])
    lines = [x for x in lines if x["prompt"] not in seen]
    labeller = Labeller(ferry, operator_principal(ferry.billing), group, judge, max_tokens)
    typer.echo(f"{len(lines)} prompts x {len(group.tiers)} tiers ({len(seen)} already in {out}): "
               f"at most ${labeller.estimate_usd(lines):.4f} at catalog prices, billed to tenant {OPERATOR}")
    if not lines or not (yes or typer.confirm("Go on?")):
        return
    for backend in ferry.backends.values():
        await backend.start()
    try:
        written, failed = await label_all(labeller, lines, out, concurrency)
    finally:
        for backend in ferry.backends.values():
            await backend.stop()
    typer.echo(f"{written} rows added to {out}" + (f"; {failed} prompts unlabelled (a rerun retries them)" if failed else ""))
