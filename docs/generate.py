"""Write the parts of docs/ that are generated from the code.

    .venv/bin/python docs/generate.py          # rewrite them
    .venv/bin/python docs/generate.py --check  # exit 1 when a page is stale

Today one part: the API scope list in docs/api.md, between the
``<!-- scopes:start -->`` and ``<!-- scopes:end -->`` markers. The scopes are
``ApiClient.Scope``; the endpoints each one opens are found by walking the
URL configuration and asking ``martech.api.permissions.required_scope`` (the
function the permission check itself calls) for every method of every view.
tests/martech/test_docs.py fails when the page and the code diverge.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "api.md"
START, END = "<!-- scopes:start -->", "<!-- scopes:end -->"
_METHODS = ("get", "post", "put", "patch", "delete")


def _setup() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")
    import django

    django.setup()


def _walk(patterns, prefix: str = ""):
    from django.urls import URLResolver

    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        else:
            yield prefix + str(p.pattern), p.callback


def _clean(path: str) -> str:
    path = path.replace("^", "").replace("/?$", "").replace("$", "")
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)
    path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)
    return "/" + path


def endpoints_by_scope() -> dict[str | None, list[str]]:
    """Scope -> sorted "METHOD /path" lines; None collects the API endpoints
    that take no scope (public or signed)."""
    from django.urls import get_resolver

    from martech.api.permissions import required_scope

    out: dict[str | None, set[str]] = {}
    for raw, callback in _walk(get_resolver().url_patterns):
        path = _clean(raw)
        if not path.startswith("/api/v1/"):
            continue
        cls = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
        if cls is None:
            continue  # a dispatcher (``events_by_method``): its views are walked on their own
        actions = getattr(callback, "actions", None)
        if actions:
            pairs = [(m, a) for m, a in actions.items() if m in _METHODS]
        else:
            pairs = [(m, None) for m in _METHODS if hasattr(cls, m)]
        for method, action in pairs:
            view = SimpleNamespace(required_scopes=getattr(cls, "required_scopes", None),
                                   read_actions=getattr(cls, "read_actions", ()), action=action)
            scope = required_scope(view, method.upper())
            out.setdefault(scope, set()).add(f"{method.upper()} {path}")
    return {k: sorted(v, key=lambda s: (s.split()[1], _METHODS.index(s.split()[0].lower()))) for k, v in out.items()}


def render_scopes() -> str:
    from martech.models import ApiClient

    by_scope = endpoints_by_scope()
    lines = [START, "", "| Scope | Grants | Endpoints |", "| --- | --- | --- |"]
    for scope in ApiClient.Scope:
        calls = by_scope.get(scope.value, [])
        lines.append(f"| `{scope.value}` | {scope.label} | {'<br>'.join(f'`{c}`' for c in calls) or '(none)'} |")
    public = by_scope.get(None, [])
    lines += ["", "Endpoints that take no scope (public, or authenticated otherwise as their section says): "
              + ", ".join(f"`{c}`" for c in public) + ".", "", END]
    return "\n".join(lines)


def rewrite(text: str, block: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + block + tail


def main(argv: list[str]) -> int:
    _setup()
    text = API_PAGE.read_text()
    new = rewrite(text, render_scopes())
    if "--check" in argv:
        if new != text:
            print(f"{API_PAGE.relative_to(ROOT)} is stale: run docs/generate.py", file=sys.stderr)
            return 1
        return 0
    API_PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
