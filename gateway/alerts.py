"""Budget alerts to a webhook. The ledger writes one alert per budget, period and threshold, when spend reaches one
of the budget's `alert_percents` (e.g. 50, 80 and 100% of its limit); with FERRYMAN_ALERT_WEBHOOK_URL set, every gateway sends each one there as Slack-compatible JSON
(`text`, plus the figures as fields of their own).

Delivery is an outbox: a replica claims an unsent alert for CLAIM_S (a conditional UPDATE, so one replica sends
it), POSTs it, and marks it sent on a 2xx. A refused or failed POST, or a replica that died mid-way, leaves it
unsent and it is taken again once the claim lapses: at least once, and exactly once unless a replica dies between
the receiver's 2xx and the mark."""
from __future__ import annotations

import asyncio
import logging

import httpx

log = logging.getLogger("ferryman")
CLAIM_S = 60.0  # how long a claimed alert waits for its sender before another replica may take it


def message(alert: dict) -> dict:
    """The webhook body: Slack's `text`, and the exact figures for a receiver that reads fields."""
    who = alert["tenant"] + (f" (key {alert['key_id']})" if alert["key_id"] is not None else "")
    spent, limit = alert["spent_micros"], alert["limit_micros"]
    text = (f"Ferryman budget alert: {who} has spent {_usd(spent)} of its {_usd(limit)} budget for "
            f"{alert['period_key']} ({100 * spent / max(limit, 1):.1f}%, its {alert['alert_percent']}% alert).")
    fields = ("tenant", "tenant_id", "key_id", "budget_id", "period_key", "spent_micros", "limit_micros",
              "alert_percent")
    return {"text": text, **{f: alert[f] for f in fields}}


def _usd(micros: int) -> str:
    return f"${micros // 1_000_000:,}.{micros % 1_000_000:06d}"  # exact: finance reads the micro-dollars


async def send_due(billing, client: httpx.AsyncClient, url: str) -> int:
    """Send every alert not yet sent that no other replica holds; the number sent."""
    sent = 0
    for alert in await billing.ledger.blocking(billing.claim_alerts, CLAIM_S):
        try:
            response = await client.post(url, json=message(alert))
        except httpx.HTTPError as exc:
            # the exception's type only: its text may carry the URL, and a Slack webhook's URL is its secret
            log.warning("budget alert %s not delivered (%s); retried in %.0f s", alert["id"], type(exc).__name__,
                        CLAIM_S)
            continue
        if not response.is_success:
            log.warning("budget alert %s refused by the webhook (HTTP %s); retried in %.0f s", alert["id"],
                        response.status_code, CLAIM_S)
            continue
        await billing.ledger.blocking(billing.mark_alert_sent, alert["id"])
        sent += 1
    return sent


async def send_forever(billing, url: str, every_s: float) -> None:
    async with httpx.AsyncClient(timeout=10.0, trust_env=True) as client:
        while True:
            try:
                await send_due(billing, client, url)
            except Exception:  # a database hiccup must not end the loop: the next round retries
                log.exception("sending budget alerts failed")
            await asyncio.sleep(every_s)
