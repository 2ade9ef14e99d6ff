"""Fixtures for the admin page: a real gateway, and Debian's chromium driven by playwright. The browser tests
skip only when chromium or playwright is really absent (`make install` puts both there)."""
from __future__ import annotations

import shutil

import pytest
from transformers import AutoTokenizer

from tests.ui.helpers import ROOT, running_gateway

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="session")
def ui_tokenizer():
    return AutoTokenizer.from_pretrained(ROOT / "models" / "large")


@pytest.fixture(scope="module")
def seeded_gateway(tmp_path_factory, ui_tokenizer):
    with running_gateway(tmp_path_factory.mktemp("ui"), ui_tokenizer, seed=True) as gateway:
        yield gateway


@pytest.fixture
def bare_gateway(tmp_path, ui_tokenizer):
    with running_gateway(tmp_path, ui_tokenizer, seed=False) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("Debian's chromium is not installed (`make install` installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"the page threw: {errors}"
