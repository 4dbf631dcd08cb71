"""A real headless Chromium (Debian's, driven by Playwright) and a login helper for browser tests."""
import os

import pytest
from django.db import connections

# Playwright's sync API runs an event loop in this thread; the ORM calls in the tests are
# plain synchronous reads and writes between browser steps.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture
def browser():
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()
        # Under Playwright the test body runs in another greenlet, which Django gives a
        # database connection of its own; close it, or the test database cannot be dropped.
        connections.close_all()


def login(page, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-pw")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
