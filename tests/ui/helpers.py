"""The UI suites' gateway: real billing on SQLite, the bundled tokenizer, echo backends, a transparent router;
optionally two weeks of traffic seeded through the real money path so the charts have something to draw."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from billing import Billing, BudgetExceeded
from billing.ledger import utcnow
from tests.harness import LENGTH_ROUTER, gateway_app
from tests.util import serve

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "ui"
ADMIN_KEY = "fm-admin-ui-test-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

# (tenant, priority, monthly budget in micro-USD or None, requests a day, share sent to the large model)
SEEDED = (("acme-support", "interactive", 6_000_000, 42, 0.25), ("globex-analytics", "standard", 4_500_000, 24, 0.6),
          ("initech-batch", "batch", None, 60, 0.1), ("umbrella-labs", "standard", 750_000, 12, 0.4))


@contextmanager
def running_gateway(db_dir: Path, tokenizer, seed: bool, router=LENGTH_ROUTER):
    wiring = gateway_app(f"sqlite:///{db_dir / 'ledger.db'}", tokenizer=tokenizer, admin_key=ADMIN_KEY, router=router)
    billing = wiring.billing
    if seed:
        seed_history(billing)
    try:
        with serve(wiring.app) as url:
            yield url, billing
    finally:
        billing.close()


def seed_history(billing: Billing, days: int = 30) -> None:
    """Usage through reserve and settle with the ledger's clock set back, one day at a time."""
    moment = [utcnow()]
    seeded = Billing(billing.database_url, clock=lambda: moment[0])
    today = moment[0].replace(hour=9, minute=0, second=0, microsecond=0)
    for t, (name, priority, budget, per_day, large) in enumerate(SEEDED):
        tenant = seeded.create_tenant(name, priority=priority)
        if budget is not None:
            seeded.set_budget(tenant["id"], limit_micros=budget)
        principal = seeded.authenticate(seeded.create_key(tenant["id"], "prod")[0])
        for day in range(days - 1, -1, -1):
            moment[0] = today - timedelta(days=day)
            for i in range(round(per_day * (1 + ((day * 7 + t * 3) % 5) / 8))):  # deterministic day-to-day variety
                model = "ferryman-large" if (i * 0.618) % 1 < large else "ferryman-small"
                prompt = 1200 + 173 * (i % 13)
                try:
                    res = seeded.reserve(principal, f"seed-{name}-{day}-{i}", model, prompt, 1000)
                except BudgetExceeded:
                    continue  # refused, as the gateway would refuse it
                seeded.settle(res, prompt_tokens=prompt, cached_tokens=256, completion_tokens=250 + 61 * (i % 11),
                              route=model.removeprefix("ferryman-"), latency_ms=120.0, route_group="auto",
                              baseline_model="ferryman-large")
    seeded.close()


def usd_text(micros: int, decimals: int = 2) -> str:
    """The page's money format at a screen's precision: cents (2) or micro-dollars (6), half up."""
    unit = 10 ** (6 - decimals)
    rounded = (abs(micros) + unit // 2) // unit * unit
    frac = f"{rounded % 1_000_000:06d}"[:decimals]
    return f"{'-' if micros < 0 and rounded else ''}${rounded // 1_000_000:,}.{frac}"


def dollars(text: str) -> float:
    """A figure as the page shows it, back to a number."""
    return float(text.replace("$", "").replace(",", ""))


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"admin_{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
