"""People's admin keys on the page, in a real browser: an admin makes an operator and a finance key on the Access tab,
each person signs in and sees (and may do) only what their role allows, the admin revokes a key, and the Audit tab
shows who did each of these."""
import httpx

from tests.ui.helpers import ADMIN_KEY

TIMEOUT_MS = 10_000
TABS = ("spend", "tenants", "prices", "live", "access", "audit")


def sign_in(page, url: str, key: str) -> None:
    page.goto(f"{url}/admin")
    page.fill("#login-key", key)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app-view:not([hidden])")
    # The page shows itself, then asks /admin/me who signed in: the name and the role's tabs come with that answer.
    page.wait_for_selector("#whoami:not(:empty)")


def sign_out(page) -> None:
    page.click("#logout")
    page.wait_for_selector("#login-view:not([hidden])")


def visible_tabs(page) -> list[str]:
    return [tab for tab in TABS if page.is_visible(f"#tabs a[data-tab={tab}]")]


def make_key(page, name: str, role: str) -> str:
    page.fill("#admin-key-create input[name=name]", name)
    page.select_option("#admin-key-create select[name=role]", role)
    page.click("#admin-key-create button[type=submit]")
    page.wait_for_selector(f"#admin-key-secret-slot:has-text('{name}')")
    page.wait_for_selector(f"#admin-key-table tr[data-name='{name}'] .badge.role-{role}")
    return page.inner_text("#admin-key-secret")


def status(url: str, key: str, method: str, path: str, body: dict | None = None) -> int:
    return httpx.request(method, f"{url}{path}", headers={"Authorization": f"Bearer {key}"}, json=body).status_code


def test_roles_made_on_the_page_see_what_they_may_and_revocation_is_audited(page, bare_gateway):
    url, billing = bare_gateway
    page.set_default_timeout(TIMEOUT_MS)
    sign_in(page, url, ADMIN_KEY)
    assert visible_tabs(page) == list(TABS)
    page.click("#tabs a[data-tab=access]")
    operator = make_key(page, "olga", "operator")
    finance = make_key(page, "fred", "finance")
    assert operator.startswith("fm-admin-")
    assert finance.startswith("fm-admin-")
    assert operator != finance
    sign_out(page)

    # the operator: tenants, prices, live; no spend, no access, no audit
    sign_in(page, url, operator)
    assert page.inner_text("#whoami") == "olga · operator"
    assert visible_tabs(page) == ["tenants", "prices", "live"]
    page.fill("#tenant-create input[name=name]", "acme")
    page.click("#tenant-create button[type=submit]")
    page.wait_for_selector("#tenant-detail h2:has-text('acme')")
    page.goto(f"{url}/admin#audit")  # a tab the role may not use: the page shows its first own tab
    page.wait_for_selector("#tab-tenants:not([hidden])")
    assert page.is_hidden("#tab-audit")
    assert status(url, operator, "GET", "/admin/reports/usage?format=csv") == 403  # no money export
    assert status(url, operator, "GET", "/admin/audit") == 403
    sign_out(page)

    # finance: spend and audit, reading only
    sign_in(page, url, finance)
    assert page.inner_text("#whoami") == "fred · finance"
    assert visible_tabs(page) == ["spend", "audit"]
    page.wait_for_selector("#tab-spend:not([hidden])")
    page.wait_for_selector("#top-tenants tbody tr")
    assert page.inner_text("#spend-error") == ""
    page.click("#tabs a[data-tab=audit]")
    row = page.wait_for_selector("#audit-table tr[data-action='tenant.create']")
    assert "olga" in row.inner_text()
    assert "operator" in row.inner_text()
    tenant_id = billing.tenant_by_name("acme")["id"]
    assert status(url, finance, "GET", "/admin/reports/usage?format=csv") == 200
    assert status(url, finance, "POST", "/admin/tenants", {"name": "nope"}) == 403
    assert status(url, finance, "PUT", "/admin/budgets", {"tenant_id": tenant_id, "limit_micros": 1}) == 403
    assert status(url, finance, "GET", "/admin/admin-keys") == 403
    sign_out(page)

    # the admin revokes finance's key: refused at once, on the page too, and in the audit log
    sign_in(page, url, ADMIN_KEY)
    page.click("#tabs a[data-tab=access]")
    fred = "#admin-key-table tr[data-name=fred]"
    page.click(f"{fred} button:has-text('Revoke')")
    page.click(f"{fred} button:has-text('Confirm revoke')")
    page.wait_for_selector(f"{fred} .badge:has-text('revoked')")
    assert page.is_visible("#admin-key-table tr[data-name=olga] .badge:has-text('active')")
    assert status(url, finance, "GET", "/admin/me") == 401
    page.click("#tabs a[data-tab=audit]")
    page.select_option("#audit-filter select[name=action]", "admin_key")
    page.click("#audit-filter button[type=submit]")
    # the unfiltered table already holds the revoke: wait for the filter to drop the other rows
    page.wait_for_selector("#audit-table tr[data-action='tenant.create']", state="detached")
    page.wait_for_selector("#audit-table tr[data-action='admin_key.revoke']")
    rows = page.query_selector_all("#audit-table tbody tr")
    assert [r.get_attribute("data-action") for r in rows] == ["admin_key.revoke", "admin_key.create",
                                                              "admin_key.create"]
    assert all("env:FERRYMAN_ADMIN_KEY" in r.inner_text() for r in rows)
    assert f"admin_key:{billing.admins.key('fred')['id']}" in rows[0].inner_text()
    assert "revoked_at" in rows[0].inner_text()
    created = {r.query_selector("td.change").inner_text() for r in rows[1:]}
    assert any('"fred"' in c and '"finance"' in c for c in created)
    assert any('"olga"' in c and '"operator"' in c for c in created)
    sign_out(page)

    sign_in_refused = page.goto(f"{url}/admin")
    assert sign_in_refused.ok
    page.fill("#login-key", finance)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:has-text('not accepted')")
