"""Fixtures shared by the browser tests."""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


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
