"""README.md and docs/ stay true to the code: every relative link resolves
(the file, and for an #anchor a heading of it), every `manage.py` command a
page names exists, every path of the repository a page names in code exists,
the configuration page documents exactly the variables deploy/env.example
lists, and the API scope list is what docs/generate.py makes from the code.
Reads files only (no database), so it is fast."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from django.core.management import get_commands

from tests.martech.test_deploy_recipe import env_example, settings_env_vars

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
MANAGE = re.compile(r"manage\.py[ \t]+([a-z_][a-z0-9_]*)")
# Paths into the repository as pages write them in code spans: a top-level
# folder of the project, then a name with no placeholder in it.
REPO_PATH = re.compile(r"^(?:\./)?((?:scripts|deploy|bench|docs|martech|routing|nurture|attribution|tests|templates)"
                       r"/[\w./-]*[\w/])$")


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text outside fenced code blocks, code spans blanked (a link
    written inside code is an example, not a link)."""
    return CODE_SPAN.sub("``", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, markup and punctuation
    dropped (hyphens and underscores kept), spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if m := re.match(r"^#{1,6}\s+(.*)$", line):
            base = slug(m[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_follows_github():
    assert slug("Privacy: subject access and erasure (`martech/privacy/`)") == \
        "privacy-subject-access-and-erasure-martechprivacy"
    assert slug("Lock order, leases and retries") == "lock-order-leases-and-retries"


def test_pages_are_found():
    names = {p.name for p in PAGES}
    assert {"README.md", "api.md", "configuration.md", "architecture.md", "style.md", "crm.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http(s), mailto: not ours to check here
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {_rel(dest)}")
    assert not broken, f"{_rel(page)}: " + "; ".join(broken)


def test_a_broken_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nothing) [gone](missing.md)\n")
    found = [t for t in LINK.findall(_prose(page.read_text()))]
    assert found == ["#title", "#nothing", "missing.md"]
    assert "title" in anchors(page) and "nothing" not in anchors(page)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_manage_commands_exist(page):
    text = page.read_text()
    named = {name for code in FENCE.findall(text) + CODE_SPAN.findall(FENCE.sub("", text))
             for name in MANAGE.findall(code)}
    unknown = sorted(named - set(get_commands()))
    assert not unknown, f"{_rel(page)} names manage.py commands that do not exist: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_repository_paths_exist(page):
    text = page.read_text()
    # Code spans, and each word of the fenced blocks (the scripts a command runs).
    spans = CODE_SPAN.findall(FENCE.sub("", text)) + [w for block in FENCE.findall(text) for w in block.split()]
    missing = sorted({m[1] for s in spans if (m := REPO_PATH.match(s)) and not (ROOT / m[1]).exists()})
    assert not missing, f"{_rel(page)} names paths that do not exist: {missing}"


def _documented_variables() -> set[str]:
    """First-column names of docs/configuration.md's tables."""
    names = set()
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if m := re.match(r"^\|\s*`([A-Z][A-Z0-9_]*\*?)`\s*\|", line):
            names.add(m[1])
    return names


def test_configuration_documents_every_variable_of_env_example():
    documented = _documented_variables()
    assert len(documented) > 80
    missing = sorted(set(env_example()) - documented)
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_configuration_documents_nothing_unknown():
    known = set(env_example()) | settings_env_vars()
    unknown = sorted(n for n in _documented_variables()
                     if n not in known and not (n.endswith("*") and any(k.startswith(n[:-1]) for k in known)))
    assert not unknown, f"docs/configuration.md documents variables nothing reads: {unknown}"


def test_api_scope_list_is_generated_from_the_code():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    page = (ROOT / "docs" / "api.md").read_text()
    assert generate.rewrite(page, generate.render_scopes()) == page, \
        "docs/api.md's scope list differs from the code: run .venv/bin/python docs/generate.py"
    from martech.models import ApiClient

    for scope in ApiClient.Scope.values:
        assert f"| `{scope}` |" in page


def _project_files():
    for folder in ["martech", "routing", "nurture", "attribution", "tests", "bench", "deploy", "scripts", "templates"]:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".html", ".js", ".example", ".yaml", ""} and path != Path(__file__):
                yield path


def test_code_cites_docs_pages_that_exist_and_nothing_outside_the_repository():
    missing, outside = [], []
    for path in _project_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        missing += [f"{_rel(path)}: {m}" for m in set(re.findall(r"docs/[\w-]+\.md", text)) if not (ROOT / m).exists()]
        if re.search(r"\b(DESIGN|STYLE)\.md\b", text):
            outside.append(_rel(path))
    assert not missing, f"cited pages that do not exist: {sorted(missing)}"
    assert not outside, f"cite DESIGN.md or STYLE.md, which are not in the repository: {sorted(outside)}"
