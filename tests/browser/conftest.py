"""Fixtures shared by the browser tests: Debian's chromium driven headless
through Playwright (never a downloaded browser), the directory screenshots
are kept in, and a second origin to serve a customer's website from."""
from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.conf import settings

# Playwright's sync API runs an asyncio loop in the test's thread; the ORM
# calls made beside it (fixtures, assertions) are ordinary synchronous ones.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
DESKTOP = {"width": 1400, "height": 1000}


@contextmanager
def chromium_page(viewport: dict[str, int] = DESKTOP) -> Iterator:
    """A page in a fresh headless Chromium, closed on the way out. Another
    visitor, without this page's cookies: ``page.context.browser.new_context()``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=viewport)
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            browser.close()


@pytest.fixture
def browser_page():
    with chromium_page() as page:
        yield page


@pytest.fixture(scope="session")
def live_server(live_server):
    """pytest-django's live server, answering one request at a time when it
    shares the tests' in-memory SQLite connection (it must: that database
    exists only in that connection). Two requests at once on one sqlite3
    connection from two threads can hang (pages that load their data with
    parallel requests, like the attribution dashboard); on PostgreSQL each
    request thread has its own connection and nothing is serialized."""
    if live_server.thread.connections_override:
        httpd, lock = live_server.thread.httpd, threading.Lock()
        app = httpd.get_app()

        def one_at_a_time(environ, start_response):
            with lock:
                return app(environ, start_response)

        httpd.set_app(one_at_a_time)
    return live_server


PASSWORD = "pw-Secret-123"  # tests.factories.UserFactory's


def admin_login(page, base_url: str, username: str) -> None:
    """Log in to the admin through its login page, as a person does."""
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base_url}/admin/")


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the browser tests keep their screenshots: BROWSER_SCREENSHOT_DIR
    (CI sets one per leg, inside the clone), else var/artifacts/screenshots
    (var/ is ignored by git). Made if missing; a file of the same name is
    overwritten by the next run."""
    configured = os.environ.get("BROWSER_SCREENSHOT_DIR", "").strip()
    path = Path(configured) if configured else Path(settings.VAR_DIR) / "artifacts" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@dataclass(frozen=True)
class StaticSite:
    url: str  # the base URL, which is also the site's origin: http://127.0.0.1:<port>
    root: Path  # the directory it serves; files added later are served too

    def add(self, name: str, content: str) -> str:
        """Write a page (or script, stylesheet) and return its URL."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        return f"{self.url}/{name}"


@pytest.fixture
def other_site(tmp_path_factory):
    """Serve static files from another origin than the live server, as a
    customer's website would: ``site = other_site({"index.html": "<html>…"})``
    (or ``other_site(a_directory)``, or ``other_site()`` and ``site.add(...)``
    later, once the page can name the site's own origin) starts a plain HTTP
    server on 127.0.0.1 and a free port. The live server answers on
    localhost, so host and port both differ: every call from these pages to
    the live server is cross-origin. Call it again for a second site; all
    stop after the test."""
    servers: list[ThreadingHTTPServer] = []

    def serve(pages: dict[str, str] | Path | None = None) -> StaticSite:
        root = pages if isinstance(pages, Path) else tmp_path_factory.mktemp("site")
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
        threading.Thread(target=server.serve_forever, name=f"other-site-{server.server_port}", daemon=True).start()
        servers.append(server)
        site = StaticSite(url=f"http://127.0.0.1:{server.server_port}", root=root)
        for name, content in (pages.items() if isinstance(pages, dict) else ()):
            site.add(name, content)
        return site

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()
