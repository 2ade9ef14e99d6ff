"""/docs in the browser: Swagger UI renders the gateway's own OpenAPI document (3.1), offline."""
import httpx

TIMEOUT_MS = 20_000


def test_docs_page_renders_every_operation_of_the_gateways_own_document(page, bare_gateway):
    url, _ = bare_gateway
    spec = httpx.get(f"{url}/openapi.json").json()
    operations = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{url}/docs")
    page.wait_for_selector(".opblock")
    shown = {(page.inner_text(f"#{block.get_attribute('id')} .opblock-summary-method"),
              block.query_selector(".opblock-summary-path").get_attribute("data-path"))
             for block in page.query_selector_all(".opblock")}
    assert spec["openapi"].startswith("3.1")
    assert shown == operations
    assert page.query_selector(".errors-wrapper") is None
    assert "Unable to render" not in page.inner_text("body")
    assert outside == []  # nothing from a CDN: the page works on a private network
