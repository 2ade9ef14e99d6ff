"""The admin page in a real headless chromium against a real gateway: sign in, tenants, keys, budgets and
limits that the API then enforces, spend charts that agree with the report, prices, the live view.
Every page is screenshotted to artifacts/ui/ (FERRYMAN_DOCS_SCREENSHOTS=1 also refreshes docs/img/)."""
import csv
import io
import os
import shutil
import threading
import time

import httpx
import pytest
from playwright.sync_api import expect
from openai import APIStatusError, AuthenticationError, OpenAI, RateLimitError

from tests.ui.helpers import ADMIN, ADMIN_KEY, ROOT, shot, usd_text

TIMEOUT_MS = 10_000


@pytest.fixture
def signed_in(page, seeded_gateway):
    url, billing = seeded_gateway
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{url}/admin")
    page.fill("#login-key", ADMIN_KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app-view:not([hidden])")
    return page, url, billing


def tab(page, name: str) -> None:
    page.click(f"#tabs a[data-tab={name}]")
    page.wait_for_selector(f"#tab-{name}:not([hidden])")


def until(condition, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Poll from Python: the page's CSP forbids the eval behind playwright's wait_for_function."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting on the page"
        time.sleep(0.1)


def docs_copy(path, name: str) -> None:
    """With FERRYMAN_DOCS_SCREENSHOTS=1, the screenshot also replaces the committed one in docs/img/."""
    if os.environ.get("FERRYMAN_DOCS_SCREENSHOTS") == "1":
        shutil.copy(path, ROOT / "docs" / "img" / f"admin_{name}.png")


def client(url: str, key: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def ask(url: str, key: str, max_tokens: int, text: str = "hello"):
    return client(url, key).chat.completions.with_raw_response.create(
        model="ferryman-small", messages=[{"role": "user", "content": text}], max_tokens=max_tokens)


def test_sign_in_rejects_a_wrong_key_and_keeps_the_key_out_of_urls(page, seeded_gateway):
    url, _ = seeded_gateway
    page.set_default_timeout(TIMEOUT_MS)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{url}/admin")
    page.wait_for_selector("#login-view:not([hidden])")
    shot(page, "login")
    page.fill("#login-key", "fm-admin-not-the-key")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:has-text('not accepted')")
    assert page.is_hidden("#app-view")
    shot(page, "login_error")

    page.fill("#login-key", ADMIN_KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#tab-spend:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('ferryman.adminKey')") == ADMIN_KEY
    page.reload()  # the session survives a reload of the tab...
    page.wait_for_selector("#tab-spend:not([hidden])")
    page.click("#logout")  # ...and signing out forgets the key
    page.wait_for_selector("#login-view:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('ferryman.adminKey')") is None
    assert requests and not [r for r in requests if ADMIN_KEY in r or not r.startswith(url)]


def test_tenant_key_budget_and_limits_are_enforced_on_the_api(signed_in):
    page, url, billing = signed_in
    tab(page, "tenants")
    create = "#tenant-create button[type=submit]"
    page.click(create)
    page.wait_for_selector("#tenant-create + .error:has-text('needs a name')")
    page.fill("#tenant-create input[name=name]", "acme-support")
    page.click(create)
    page.wait_for_selector("#tenant-create + .error:has-text('already exists')")
    page.fill("#tenant-create input[name=name]", "hooli")
    page.select_option("#tenant-create select[name=priority]", "interactive")
    page.click(create)
    page.wait_for_selector("#tenant-detail h2:has-text('hooli')")
    tenant = billing.tenant_by_name("hooli")
    assert tenant["priority"] == "interactive"

    page.fill("#key-create input[name=name]", "checkout")
    page.click("#key-create button[type=submit]")
    secret = page.inner_text("#key-secret")
    assert secret.startswith("fm-") and billing.authenticate(secret).tenant_id == tenant["id"]
    shot(page, "tenant_new_key")
    assert ask(url, secret, 5).http_response.status_code == 200

    budget = "#tenant-detail .budget-form[data-scope=tenant]"
    page.fill(f"{budget} input[name=limit]", "-1")
    page.click(f"{budget} button[type=submit]")
    page.wait_for_selector(f"#tenant-detail .error:has-text('amount in US dollars')")
    assert billing.list_budgets(tenant["id"]) == []  # a refused value changes nothing
    page.fill(f"{budget} input[name=limit]", "0.0002")
    page.click(f"{budget} button[type=submit]")
    page.wait_for_selector(f"{budget} button:has-text('Remove budget')")
    [saved] = billing.list_budgets(tenant["id"])
    assert (saved["limit_micros"], saved["period"], saved["key_id"]) == (200, "monthly", None)

    with pytest.raises(APIStatusError) as refused:  # 400 max tokens at $0.80/1M could cost $0.00032
        ask(url, secret, 400)
    assert refused.value.status_code == 402 and "budget" in refused.value.message
    assert ask(url, secret, 5).http_response.status_code == 200  # what still fits goes through

    page.fill("#tenant-settings input[name=rpm]", "0")
    page.click("#tenant-settings button[type=submit]")
    page.wait_for_selector("#tenant-detail .error:has-text('at least 1')")
    assert billing.tenant(tenant["id"])["rpm"] is None
    page.fill("#tenant-settings input[name=rpm]", "600")
    page.fill("#tenant-settings input[name=large_share]", "0.3")
    page.click("#tenant-settings button[type=submit]")
    page.wait_for_selector("#tenant-table tr[data-tenant=hooli] td:has-text('600 rpm')")
    assert (billing.tenant(tenant["id"])["rpm"], billing.tenant(tenant["id"])["large_share"]) == (600, 0.3)

    key_row = "#key-table tr[data-key=checkout]"
    page.click(f"{key_row} button:has-text('Edit')")
    page.fill("#key-limits input[name=rpm]", "2")
    page.click("#key-limits button[type=submit]")
    page.wait_for_selector(f"{key_row} td:has-text('2 rpm')")
    key = next(k for k in billing.list_keys(tenant["id"]) if k["name"] == "checkout")
    assert key["rpm"] == 2
    key_budget = "#key-editor .budget-form[data-scope=key]"
    page.fill(f"{key_budget} input[name=limit]", "1.5")
    page.select_option(f"{key_budget} select[name=period]", "daily")
    page.fill(f"{key_budget} input[name=alert]", "101")
    page.click(f"{key_budget} button[type=submit]")
    page.wait_for_selector("#key-editor .error:has-text('from 1 to 100')")
    page.fill(f"{key_budget} input[name=alert]", "90, 50%")
    page.click(f"{key_budget} button[type=submit]")
    page.wait_for_selector(f"{key_row} td:has-text('$0.00 / $1.50')")
    [key_cap] = [b for b in billing.list_budgets(tenant["id"]) if b["key_id"] == key["id"]]
    assert (key_cap["limit_micros"], key_cap["period"], key_cap["alert_percents"]) == (1_500_000, "daily", [50, 90])
    page.click(f"{key_budget} button:has-text('Remove budget')")
    page.click(f"{key_budget} button:has-text('Really remove?')")
    page.wait_for_selector(f"{key_row} td:has-text(\"tenant's\")")
    assert [b["key_id"] for b in billing.list_budgets(tenant["id"])] == [None]
    statuses = []
    for _ in range(3):
        try:
            statuses.append(ask(url, secret, 1).http_response.status_code)
        except RateLimitError as exc:
            statuses.append(exc.status_code)
    assert statuses[-1] == 429 and statuses.count(200) <= 2

    page.fill("#key-create input[name=name]", "temporary")
    page.click("#key-create button[type=submit]")
    temporary = page.inner_text("#key-secret")
    revoke = "#key-table tr[data-key=temporary] button:has-text('Revoke')"
    page.click(revoke)
    page.click("#key-table tr[data-key=temporary] button:has-text('Confirm revoke')")
    page.wait_for_selector("#key-table tr[data-key=temporary] .badge:has-text('revoked')")
    with pytest.raises(AuthenticationError):
        ask(url, temporary, 1)

    page.click(f"{key_row} button:has-text('Edit')")
    page.wait_for_selector("#key-editor .budget-form[data-scope=key]")
    page.click("#tenant-table tr[data-tenant=acme-support]")
    page.wait_for_selector("#tenant-detail h2:has-text('acme-support')")
    page.wait_for_selector("#toast.show", state="detached")  # a clean picture for docs/
    page.wait_for_timeout(300)
    docs_copy(shot(page, "tenants"), "tenants")


def test_spend_page_agrees_with_the_report_and_downloads_the_same_csv(signed_in):
    page, url, billing = signed_in
    page.wait_for_selector("#budget-bars .budget-row")
    page.wait_for_selector("#daily-chart svg rect")
    since = page.evaluate("daysBack(30)")
    with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as api:
        report = api.get("/admin/reports/usage", params={"group_by": "day,model", "since": since}).json()
        by_tenant = api.get("/admin/reports/usage", params={"group_by": "tenant", "since": since}).json()
        by_model = api.get("/admin/reports/usage", params={"group_by": "model", "since": since}).json()
        expected_csv = api.get("/admin/reports/usage",
                               params={"group_by": "tenant,model,day", "since": since, "format": "csv"}).text
        finance = api.get("/admin/reports/usage", params={"group_by": "tenant,model,day", "since": since}).json()
    assert page.inner_text("#kpi-requests") == f"{report['totals']['requests']:,}"
    assert page.inner_text("#kpi-cost") == usd_text(report["totals"]["cost_micros"])
    totals = report["totals"]
    cents = lambda micros: (micros + 5_000) // 10_000  # noqa: E731  (the shown figures: baseline − spend)
    assert page.inner_text("#routing-saved") == usd_text((cents(totals["baseline_cost_micros"])
                                                          - cents(totals["cost_micros"])) * 10_000)
    exact = totals["savings_micros"]
    assert page.get_attribute("#routing-saved .money", "title") == f"${exact // 10**6:,}.{exact % 10**6:06d}"
    # One share per model that served (any number of them), savings from each record's own baseline.
    shares = [e.get_attribute("data-model") for e in page.query_selector_all("#routing .split > div")]
    assert shares == [r["model"] for r in by_model["rows"]] and len(shares) >= 2
    busiest = max(by_model["rows"], key=lambda r: r["requests"])
    assert busiest["model"] in page.inner_text("#kpi-busiest-note")
    drawn = {(r.get_attribute("data-day"), r.get_attribute("data-model")): int(r.get_attribute("data-cost"))
             for r in page.query_selector_all("#daily-chart rect")}
    assert drawn == {(r["day"], r["model"]): r["cost_micros"] for r in report["rows"] if r["cost_micros"]}
    top = max(by_tenant["rows"], key=lambda r: r["cost_micros"])["tenant"]
    assert page.get_attribute("#top-tenants tbody tr:first-child", "data-tenant") == top
    for budget in billing.list_budgets():
        if budget["key_id"] is None:
            name = billing.tenant(budget["tenant_id"])["name"]
            shown = float(page.get_attribute(f"#budget-bars .budget-row[data-tenant='{name}']", "data-percent"))
            assert shown == pytest.approx(100 * budget["spent_micros"] / budget["limit_micros"], abs=0.01)
    docs_copy(shot(page, "spend"), "spend")

    with page.expect_download() as download:
        page.click("#download-csv")
    saved = download.value.path()
    assert download.value.suggested_filename == f"ferryman-usage-{since}-now.csv"
    text = open(saved, encoding="utf-8").read()
    assert text == expected_csv
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) > 20 and sum(int(r["cost_micros"]) for r in rows) == report["totals"]["cost_micros"]
    assert [(r["tenant"], r["model"], r["day"], int(r["requests"]), int(r["cost_micros"]), int(r["savings_micros"]))
            for r in rows] == [(r["tenant"], r["model"], r["day"], r["requests"], r["cost_micros"], r["savings_micros"])
                               for r in finance["rows"]]


def test_price_edits_validate_and_apply_to_the_next_request(signed_in):
    page, url, billing = signed_in
    tenant = billing.create_tenant("pricing-probe")
    key = billing.create_key(tenant["id"])[0]
    tab(page, "prices")
    row = "#price-table tr[data-model=ferryman-small]"
    page.wait_for_selector(row)
    before = {p["model"]: p for p in billing.list_prices()}["ferryman-small"]
    page.fill(f"{row} input[name=output_micros_per_m]", "1.6x")
    page.click(f"{row} button:has-text('Save')")
    page.wait_for_selector("#price-error:has-text('output price of ferryman-small')")
    assert {p["model"]: p for p in billing.list_prices()}["ferryman-small"] == before

    page.fill(f"{row} input[name=output_micros_per_m]", "1.6")
    page.click(f"{row} button:has-text('Save')")
    page.wait_for_selector("#toast:has-text('Price of ferryman-small saved')")
    assert {p["model"]: p for p in billing.list_prices()}["ferryman-small"]["output_micros_per_m"] == 1_600_000
    answer = ask(url, key, 10)
    usage = answer.parse().usage
    expected = -(-(usage.prompt_tokens * before["input_micros_per_m"] + usage.completion_tokens * 1_600_000) // 10**6)
    assert round(float(answer.headers["x-ferryman-cost-usd"]) * 1e6) == expected

    new = "#price-table tr[data-model='']"
    page.fill(f"{new} input[name=model]", "partner-70b")
    for field, value in (("input_micros_per_m", "3"), ("cached_input_micros_per_m", "0.75"),
                         ("output_micros_per_m", "12")):
        page.fill(f"{new} input[name={field}]", value)
    page.click(f"{new} button:has-text('Add price')")
    page.wait_for_selector("#price-table tr[data-model=partner-70b]")
    added = {p["model"]: p for p in billing.list_prices()}["partner-70b"]
    assert (added["input_micros_per_m"], added["cached_input_micros_per_m"], added["output_micros_per_m"]) == \
        (3_000_000, 750_000, 12_000_000)
    assert added["gpu_hour_micros"] is None  # left empty: billed per token

    # A GPU-hour price set elsewhere shows in the table; the field sets and clears it (empty: per-token billing).
    billing.set_price("partner-70b", input_micros_per_m=3_000_000, cached_input_micros_per_m=750_000,
                      output_micros_per_m=12_000_000, gpu_hour_micros=2_490_000)
    tab(page, "spend")
    tab(page, "prices")
    row = "#price-table tr[data-model=partner-70b]"
    expect(page.locator(f"{row} input[name=gpu_hour_micros]")).to_have_value("2.49")
    for shown, stored in (("", None), ("1.25", 1_250_000)):
        before = page.query_selector(row)
        page.fill(f"{row} input[name=gpu_hour_micros]", shown)
        page.click(f"{row} button:has-text('Save')")
        before.wait_for_element_state("hidden")  # a save re-renders the table: the next fill must use the new row
        until(lambda: {p["model"]: p for p in billing.list_prices()}["partner-70b"]["gpu_hour_micros"] == stored)
        expect(page.locator(f"{row} input[name=gpu_hour_micros]")).to_have_value(shown)
    shot(page, "prices")


def test_live_view_shows_rate_latency_and_engine_state(signed_in):
    from backends.engine import metrics as engine

    page, url, billing = signed_in
    tenant = billing.create_tenant("live-probe")
    key = billing.create_key(tenant["id"])[0]
    # Set the way EngineMetrics.observe_step sets them for an in-process engine (the echo backends have none).
    engine.KV_USAGE.labels("ferryman-large").set(0.6125)
    engine.RUNNING.labels("ferryman-large").set(12)
    engine.WAITING.labels("ferryman-large").set(3)
    stop = threading.Event()

    def traffic() -> None:  # steady load on both routes while the page polls
        i = 0
        while not stop.is_set():
            ask(url, key, 4, "x" * (5 + 70 * (i % 3 == 0)))
            engine.GENERATED.labels("ferryman-large").inc(4)
            i += 1
            time.sleep(0.03)

    worker = threading.Thread(target=traffic)
    try:
        tab(page, "live")
        worker.start()
        until(lambda: page.inner_text("#live-rps") != "–")  # a rate needs two polls
        until(lambda: len(page.query_selector_all("#spark-rps polyline")) == 1)
        page.wait_for_timeout(2 * 2000)  # a few more polls draw the sparklines
        row = "#engine-table tr[data-model=ferryman-large]"
        page.wait_for_selector(row)
        assert [c.strip() for c in page.inner_text(row).split("\t")][1:4] == ["61.3%", "12", "3"]
        assert float(page.inner_text("#live-rps")) > 0
        assert page.inner_text("#live-p95").endswith(("ms", "s"))
        assert float(page.inner_text("#engine-table tr[data-model=ferryman-large] td:last-child")) > 0
        shot(page, "live")
    finally:
        stop.set()
        if worker.is_alive():
            worker.join()
        for gauge in (engine.KV_USAGE, engine.RUNNING, engine.WAITING, engine.GENERATED):
            gauge.remove("ferryman-large")


def test_names_are_shown_as_text_never_markup(signed_in):
    page, url, billing = signed_in
    name = "<img src=x onerror=alert(1)>"
    tab(page, "tenants")
    page.fill("#tenant-create input[name=name]", name)
    page.click("#tenant-create button[type=submit]")
    page.wait_for_selector("#tenant-detail h2:has-text('<img src=x')")
    assert page.inner_text("#tenant-detail h2") == name and billing.tenant_by_name(name)
    tab(page, "spend")
    page.wait_for_selector("#budget-bars .budget-row")
    assert page.query_selector("main img") is None

