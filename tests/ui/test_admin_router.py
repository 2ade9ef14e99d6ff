"""The admin page's router targets: per route group and tenant, the realised strongest-tier share against the
tenant's target and the tenants' feedback, as GET /admin/router/targets reports them. A real router (the shipped
`general` artifact), so the live window is the one the gateway routes by."""
import httpx
import pytest

from classifier.router import Router
from tests.ui.helpers import ADMIN, ADMIN_KEY, running_gateway, shot

PROMPTS = ["What is the capital of France?", "Prove that there are infinitely many primes.",
           "Compute 48213 * 9917 and explain each carry.", "hi", "Summarise the causes of the First World War.",
           "Write a haiku about rain."]


@pytest.fixture
def routed_gateway(tmp_path, ui_tokenizer):
    with running_gateway(tmp_path, ui_tokenizer, seed=False, router=Router.load("general")) as gateway:
        yield gateway


def traffic(url, billing, n=24):
    """A tenant with a 30% target sends n routed requests and grades two answers; the targets JSON after it."""
    tenant = billing.create_tenant("router-probe", large_share=0.3)
    key = billing.create_key(tenant["id"])[0]
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        ids = []
        for i in range(n):
            r = client.post("/v1/chat/completions", json={"model": "auto", "max_tokens": 3, "messages": [
                {"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}]})
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-request-id"])
        for request_id, score in zip(ids, (0.75, 0.25)):
            assert client.post("/v1/feedback", json={"request_id": request_id, "score": score}).status_code == 200
        assert client.get("/admin/router/targets").status_code == 401  # a tenant key is not the admin key
        [row] = client.get("/admin/router/targets", headers=ADMIN).json()
    return tenant, row


def test_targets_json_reports_share_target_and_feedback_per_group_and_tenant(routed_gateway):
    url, billing = routed_gateway
    tenant, row = traffic(url, billing)
    routes = [r["route"] for r in billing.usage(tenant["id"])]
    assert (row["group"], row["tenant_id"], row["window"]) == ("auto", str(tenant["id"]), 24)
    assert row["target_share"] == 0.3 and row["realised_share"] == routes.count("ferryman-large") / 24
    assert (row["feedback_quality"], row["feedback_count"]) == (0.5, 2)


def test_live_tab_shows_each_groups_share_against_its_target_and_feedback(page, routed_gateway):
    url, billing = routed_gateway
    tenant, row = traffic(url, billing)
    page.set_default_timeout(10_000)
    page.goto(f"{url}/admin")
    page.fill("#login-key", ADMIN_KEY)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#app-view:not([hidden])")
    page.click("#tabs a[data-tab=live]")
    line = f"#router-targets tr[data-group=auto][data-tenant='{tenant['id']}']"
    page.wait_for_selector(line)
    cells = [c.strip() for c in page.inner_text(line).split("\t")]
    assert cells[:2] == ["auto", "router-probe"]  # the tenant by name, though the JSON names it by id
    assert cells[2] == f"{100 * row['realised_share']:.1f}%" and cells[3] == "30.0%"
    assert cells[4:] == ["24", "0.50 · 2"]
    assert page.query_selector(f"{line} .bar .target-tick") is not None  # the target drawn on the share's bar
    shot(page, "router_targets")
