"""Static files as production serves them: collectstatic with the manifest
storage (hashed names, compressed copies) succeeds from the repository as it
is, and every page that uses static assets loads them through whitenoise with
debug off. The API docs pages load nothing from outside the site."""
from __future__ import annotations

import re

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

STATIC_REF = re.compile(r'(?:src|href)="(/static/[^"]+)"')
EXTERNAL_REF = re.compile(r'(?:src|href)=["\'](?:https?:)?//', re.I)


@pytest.fixture
def collected(settings, tmp_path):
    settings.DEBUG = False
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STORAGES = {**settings.STORAGES, "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"}}
    call_command("collectstatic", "--noinput", verbosity=0)
    assert (settings.STATIC_ROOT / "staticfiles.json").exists()
    return settings.STATIC_ROOT


def _assets_load(client: Client, html: str) -> list[str]:
    refs = sorted(set(STATIC_REF.findall(html)))
    for ref in refs:
        # A hashed name (manifest storage) served by whitenoise.
        assert re.search(r"\.[0-9a-f]{12}\.\w+$", ref), ref
        answer = client.get(ref)
        assert answer.status_code == 200, ref
    return refs


@pytest.mark.django_db
def test_collectstatic_with_the_manifest_storage_keeps_vendored_files_whole(collected):
    # Chart.js names its source map; the storage refuses a reference to a missing file.
    assert list(collected.glob("attribution/vendor/chart.umd.*.js"))
    assert list(collected.glob("attribution/vendor/chart.umd.js.map"))
    assert list(collected.glob("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.*.js"))


@pytest.mark.django_db
def test_pages_load_their_static_files_with_debug_off(collected, superuser):
    client = Client()
    login = client.get("/admin/login/")
    assert login.status_code == 200
    assert _assets_load(client, login.content.decode())
    client.force_login(superuser)
    for url in ("/admin/", reverse("admin:martech_lead_changelist"), reverse("admin:attribution_dashboard"),
                reverse("admin:nurture_workflow_changelist")):
        page = client.get(url)
        assert page.status_code == 200, url
        refs = _assets_load(client, page.content.decode())
        assert refs, url
    dashboard = client.get(reverse("admin:attribution_dashboard")).content.decode()
    assert any("chart.umd" in ref for ref in STATIC_REF.findall(dashboard))


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["api-docs", "api-redoc"])
def test_api_docs_are_served_from_our_own_static_files(collected, name):
    client = Client()
    page = client.get(reverse(name))
    assert page.status_code == 200
    html = page.content.decode()
    assert not EXTERNAL_REF.search(html), EXTERNAL_REF.search(html)
    refs = _assets_load(client, html)
    assert any("drf_spectacular_sidecar" in ref for ref in refs)


@pytest.mark.django_db
def test_hosted_form_pages_load_only_our_own_static_files(collected):
    from tests.factories import FormFactory

    FormFactory(key="hosted")
    client = Client()
    for url in (reverse("form-page", args=["hosted"]), reverse("form-thanks", args=["hosted"])):
        page = client.get(url)
        assert page.status_code == 200, url
        html = page.content.decode()
        assert not EXTERNAL_REF.search(html), EXTERNAL_REF.search(html)
        assert any("martech/forms/form." in ref for ref in _assets_load(client, html)), url
