"""What finance reads on the Spend screen: one money precision per screen whose figures add up, exact figures on
hover, an axis that never repeats a label, internal tenants apart from customers, budget alerts on the page."""
import httpx
import pytest

from tests.ui.helpers import ADMIN_KEY, dollars, usd_text

TIMEOUT_MS = 10_000


def sign_in(page, url: str) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{url}/admin")
    page.fill("#login-key", ADMIN_KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app-view:not([hidden])")
    page.wait_for_selector("#daily-chart svg rect")


def texts(page, selector: str) -> list[str]:
    return [e.inner_text() for e in page.query_selector_all(selector)]


def spend(url: str, key: str, n: int, max_tokens: int = 40) -> None:
    for _ in range(n):
        answer = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                            json={"model": "auto", "messages": [{"role": "user", "content": "hello " * 30}],
                                  "max_tokens": max_tokens})
        assert answer.status_code == 200


@pytest.fixture
def small_spend(bare_gateway):
    """Two customers, our labelling tenant and a budget past its two alert thresholds: well under a dollar in all."""
    url, billing = bare_gateway
    keys = {}
    for name, internal in (("acme", False), ("globex", False), ("ferryman-operator", True)):
        tenant = billing.create_tenant(name, internal=internal)
        keys[name] = billing.create_key(tenant["id"])[0]
    billing.set_budget(billing.tenant_by_name("globex")["id"], limit_micros=1_000_000, alert_percents=[1, 2])
    spend(url, keys["acme"], 3)
    spend(url, keys["globex"], 2)
    spend(url, keys["ferryman-operator"], 6)  # more than acme: still never a "top tenant" unless asked
    while len(billing.list_alerts()) < 2:
        spend(url, keys["globex"], 1, max_tokens=400)
    return url, billing


def test_a_screen_under_a_dollar_shows_micro_dollars_that_add_up(page, small_spend):
    url, billing = small_spend
    sign_in(page, url)
    [totals] = [httpx.get(f"{url}/admin/reports/usage", params={"group_by": "tenant", "since": "2000-01-01"},
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["totals"]]
    assert 0 < totals["cost_micros"] < 1_000_000
    assert page.inner_text("#kpi-cost") == usd_text(totals["cost_micros"], 6)
    money = texts(page, "#tab-spend .money")
    assert money and all(len(m.split(".")[1]) == 6 for m in money)  # one precision on the screen
    ticks = [e.text_content() for e in page.query_selector_all("#daily-chart text.tick")]
    assert len(ticks) >= 3 and len(set(ticks)) == len(ticks) and all(len(t.split(".")[1]) == 6 for t in ticks)
    # baseline − spend = saved, as shown
    shown = {k: dollars(page.inner_text(f"#routing-{k}")) for k in ("spent", "baseline", "saved")}
    assert round(shown["baseline"] - shown["spent"], 6) == shown["saved"]
    # customers + internal = spend, as shown
    note = [dollars(m) for m in texts(page, "#kpi-cost-note .money")]
    assert round(sum(note), 6) == dollars(page.inner_text("#kpi-cost"))


def test_internal_tenants_are_apart_from_the_top_tenants_until_asked(page, small_spend):
    url, _ = small_spend
    sign_in(page, url)
    top = [e.get_attribute("data-tenant") for e in page.query_selector_all("#top-tenants tbody tr")]
    assert sorted(top) == ["acme", "globex"]
    internal = [e.get_attribute("data-tenant") for e in page.query_selector_all("#internal-tenants tbody tr")]
    assert internal == ["ferryman-operator"]
    rows = [dollars(e.inner_text()) for e in page.query_selector_all(
        "#top-tenants tbody td:nth-child(3), #internal-tenants tbody td:nth-child(3)")]
    assert round(sum(rows), 6) == dollars(page.inner_text("#kpi-cost"))  # every tenant's row adds up to the spend
    saved = [dollars(e.inner_text()) for e in page.query_selector_all(
        "#top-tenants tbody td:nth-child(4), #internal-tenants tbody td:nth-child(4)")]
    assert round(sum(saved), 6) == dollars(page.inner_text("#kpi-saved"))  # and their savings to what was saved
    page.check("#show-internal")
    page.wait_for_selector("#internal-tenants[hidden]", state="attached")
    top = [e.get_attribute("data-tenant") for e in page.query_selector_all("#top-tenants tbody tr")]
    assert sorted(top) == ["acme", "ferryman-operator", "globex"]


def test_budget_alerts_are_on_the_page(page, small_spend):
    url, billing = small_spend
    sign_in(page, url)
    alerts = billing.list_alerts()
    assert [a["alert_percent"] for a in alerts] == [1, 2]  # one per threshold
    for alert in alerts:
        row = page.wait_for_selector(f"#alerts tbody tr[data-alert-id='{alert['id']}']")
        assert row.get_attribute("data-tenant") == "globex"
        assert usd_text(alert["spent_micros"], 6) in row.inner_text() and "$1.000000" in row.inner_text()
        assert f"{alert['alert_percent']}%" in row.inner_text()
        assert "not sent" in row.inner_text()  # no webhook set on this gateway
    budget = page.query_selector("#budget-bars .budget-row[data-tenant=globex]")
    ticks = budget.query_selector_all(".alert-tick")
    assert [t.get_attribute("data-percent") for t in ticks] == ["1", "2"]
    assert "alerts at 1%, 2%" in budget.inner_text()


def test_the_chart_axis_never_repeats_a_label_and_shows_cents_above_a_dollar(page, seeded_gateway):
    url, _ = seeded_gateway
    sign_in(page, url)
    ticks = [e.text_content() for e in page.query_selector_all("#daily-chart text.tick")]
    assert len(ticks) >= 3 and len(set(ticks)) == len(ticks)
    assert all(len(t.split(".")[1]) == 2 for t in ticks)
    assert len(page.inner_text("#kpi-cost").split(".")[1]) == 2
    for el in page.query_selector_all("#tab-spend .money"):  # the exact figure on hover
        assert len(el.get_attribute("title").split(".")[1]) == 6
    facts = [dollars(e.inner_text()) for e in page.query_selector_all("#routing .facts div[data-model] .money")]
    assert round(sum(facts), 2) == dollars(page.inner_text("#routing-spent"))  # per model adds up to the spend
    saved = [dollars(e.inner_text()) for e in page.query_selector_all(
        "#top-tenants tbody td:nth-child(4), #internal-tenants tbody td:nth-child(4)")]
    assert round(sum(saved), 2) == dollars(page.inner_text("#kpi-saved"))  # tenants' savings add up to "Saved"
    budgeted = [r for r in page.query_selector_all("#budget-bars .budget-row .figures") if r.query_selector(".limit")]
    assert budgeted
    for row in budgeted:  # spent + held + left = limit, as shown
        spent, held, left, limit = (dollars(row.query_selector(f".money.{k}").inner_text())
                                    for k in ("spent", "held", "left", "limit"))
        assert round(spent + held + left, 2) == limit


def tenant_screen_figures(page, tenant: str) -> dict:
    """The Tenants screen with `tenant` open: every money figure (shown, exact) and its budget's split as shown."""
    page.click(f"#tenant-table tr[data-tenant='{tenant}']")
    page.wait_for_selector(f"#tenant-detail h2:has-text('{tenant}')")
    now = "#tenant-detail .budget-form[data-scope=tenant] .budget-now"
    split = {k: dollars(page.inner_text(f"{now} .money.{k}")) for k in ("spent", "held", "left", "limit")}
    figures = [(e.inner_text(), e.get_attribute("title")) for e in page.query_selector_all("#tab-tenants .money")]
    return {"split": split, "figures": figures}


def test_the_tenants_screen_has_one_precision_and_its_budget_figures_add_up(page, bare_gateway):
    url, billing = bare_gateway
    tiny = billing.create_tenant("tiny")
    billing.set_budget(tiny["id"], limit_micros=500_000)
    principal = billing.authenticate(billing.create_key(tiny["id"])[0])
    for i, out in enumerate((1_234, 2_501)):  # spent 3,735 tokens of small output at $0.80/1M: $0.002988
        billing.settle(billing.reserve(principal, f"s{i}", "ferryman-small", 0, out), prompt_tokens=0,
                       completion_tokens=out)
    billing.reserve(principal, "in-flight", "ferryman-small", 1_111, 777)  # held: $0.000844
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{url}/admin#tenants")
    page.fill("#login-key", ADMIN_KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#tenant-table tr[data-tenant=tiny]")

    budget = billing.list_budgets(tiny["id"])[0]
    shown = tenant_screen_figures(page, "tiny")
    assert all(len(text.split(".")[1]) == 6 for text, _ in shown["figures"])  # every figure under $1: micro-dollars
    assert shown["split"] == {"spent": budget["spent_micros"] / 1e6, "held": budget["reserved_micros"] / 1e6,
                              "left": budget["remaining_micros"] / 1e6, "limit": 0.5}

    big = billing.create_tenant("big")  # a $250 budget on the same screen: cents for every figure there
    billing.set_budget(big["id"], limit_micros=250_000_000)
    page.reload()
    page.wait_for_selector("#tenant-table tr[data-tenant=big]")
    shown = tenant_screen_figures(page, "tiny")
    assert all(len(text.split(".")[1]) == 2 for text, _ in shown["figures"])
    assert all(len(title.split(".")[1]) == 6 for _, title in shown["figures"])  # the exact figure on hover
    split = shown["split"]
    assert round(split["spent"] + split["held"] + split["left"], 2) == split["limit"] == 0.5  # adds up as shown
    exact = [title for text, title in shown["figures"]]
    assert usd_text(budget["spent_micros"], 6) in exact and usd_text(budget["remaining_micros"], 6) in exact
