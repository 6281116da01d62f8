"""Every martech admin screen renders for a superuser on demo data."""
from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse

from tests.martech.admin_demo import build_demo

pytestmark = pytest.mark.django_db

MARTECH_MODELS = sorted(
    (m for m in admin.site._registry if m._meta.app_label == "martech"), key=lambda m: m._meta.model_name
)
# Rows made only by services or commands: the admin offers no "add".
NO_ADD = {"apiclient", "event", "stagetransition", "quarantinedevent", "salestask", "consentconfirmation",
          "notification", "capturepending"}
HISTORY = {"lifecyclestage", "eventtype", "campaign", "utmalias", "channelrule", "form", "apiclient", "website",
           "subscriptiontype"}


def _url(model, view, *args):
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def demo(db):
    build_demo(leads=60)


def test_every_core_model_is_registered():
    names = {m._meta.model_name for m in MARTECH_MODELS}
    assert names >= {
        "account", "lead", "identity", "lifecyclestage", "stagetransition", "consentrecord", "eventtype",
        "event", "quarantinedevent", "campaign", "utmalias", "channelrule", "form", "apiclient",
    }


@pytest.mark.parametrize("model", MARTECH_MODELS, ids=lambda m: m._meta.model_name)
def test_changelist_add_change_and_history_pages_render(client, superuser, demo, model):
    client.force_login(superuser)
    response = client.get(_url(model, "changelist"))
    assert response.status_code == 200
    obj = model._default_manager.order_by("pk").first()
    assert obj is not None, f"demo data has no {model._meta.model_name}"
    assert client.get(_url(model, "change", obj.pk)).status_code == 200
    add = client.get(_url(model, "add"))
    assert add.status_code == (403 if model._meta.model_name in NO_ADD else 200)
    if model._meta.model_name in HISTORY:
        assert client.get(_url(model, "history", obj.pk)).status_code == 200


@pytest.mark.parametrize("model", MARTECH_MODELS, ids=lambda m: m._meta.model_name)
def test_changelist_search_and_filters_render(client, superuser, demo, model):
    client.force_login(superuser)
    assert client.get(_url(model, "changelist"), {"q": "person1@acme.example"}).status_code == 200
    assert client.get(_url(model, "changelist"), {"q": "acme"}).status_code == 200


def test_admin_index_lists_martech(client, superuser, demo):
    client.force_login(superuser)
    response = client.get(reverse("admin:index"))
    assert response.status_code == 200
    assert b"Leads" in response.content and b"Quarantined events" in response.content
