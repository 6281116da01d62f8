"""Words, not codes (issue 18, item 4): every model the admin shows has a
real title, codes show as labels, the dashboards are in the navigation, a
page the user may not use says so, and "View site" leads somewhere."""
from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.db import models
from django.urls import reverse

from martech.models import EventType
from martech.scoring.models import Segment
from tests.factories import EventFactory, LeadFactory, UserFactory

pytestmark = pytest.mark.django_db

def _default_str(model) -> bool:
    return model.__str__ is models.Model.__str__


def test_every_model_in_the_admin_has_a_real_title():
    registered = {model._meta.label: model for model in admin.site._registry}
    inline_models = {inline.model._meta.label: inline.model for ma in admin.site._registry.values()
                     for inline in ma.inlines}
    walked = {**registered, **inline_models}
    assert len(walked) > 50
    missing = {label for label, model in walked.items() if _default_str(model)}
    assert missing == set()


def test_titles_read_as_words(superuser):
    lead = LeadFactory(email="ann@acme.example")
    event = EventFactory(lead=lead)
    assert not re.search(r"object \(\d+\)", str(event))
    assert str(event).startswith("Page viewed at ")
    assert str(EventType(name="cart_abandoned")) == "Cart abandoned"  # no label: the name, humanized


def test_events_are_shown_by_their_catalog_label(admin_client):
    EventFactory(lead=LeadFactory())
    html = admin_client.get(reverse("admin:martech_event_changelist")).content.decode()
    assert "Page viewed" in html
    html = admin_client.get(reverse("admin:martech_eventtype_changelist")).content.decode()
    assert "Demo requested" in html and "Webinar registration" in html


def test_analyst_finds_the_dashboards_in_the_navigation(client, analyst):
    client.force_login(analyst)
    html = client.get(reverse("admin:index")).content.decode()
    assert "Dashboards" in html
    assert f'href="{reverse("admin:attribution_dashboard")}"' in html
    assert f'href="{reverse("admin:routing_sla_report")}"' in html
    # and in the sidebar of any other admin page
    html = client.get(reverse("admin:martech_lead_changelist")).content.decode()
    assert f'href="{reverse("admin:attribution_dashboard")}"' in html


def test_no_dashboard_link_for_staff_who_cannot_open_it(client):
    client.force_login(UserFactory(username="nobody"))
    html = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:attribution_dashboard") not in html
    assert client.get(reverse("admin:attribution_dashboard")).status_code == 403


def test_view_site_leads_to_the_api_docs(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert 'href="/api/docs/"' in html
    assert admin_client.get("/api/docs/").status_code == 200


def test_analyst_denied_the_gallery_is_told_why(client, analyst):
    client.force_login(analyst)
    response = client.get(reverse("admin:nurture_workflow_gallery"))
    assert response.status_code == 302
    assert response.url == reverse("admin:nurture_workflow_changelist")
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert shown and "Can add workflow" in shown[0]
    page = client.get(response.url).content.decode()
    assert "Can add workflow" in page and 'class="error"' in page


def test_analyst_denied_enrolling_is_told_why(client, analyst):
    from nurture.gallery import workflow_create_from_gallery

    workflow = workflow_create_from_gallery(key="ebook_drip")
    client.force_login(analyst)
    response = client.get(reverse("admin:nurture_workflow_enroll", args=[workflow.pk]), follow=True)
    assert response.redirect_chain[-1][0] == reverse("admin:nurture_workflow_change", args=[workflow.pk])
    assert "Can change workflow" in response.content.decode()


def test_dashboard_names_codes_and_has_tables(client, analyst):
    client.force_login(analyst)
    html = client.get(reverse("admin:attribution_dashboard")).content.decode()
    labels = re.search(r'<script id="att-labels" type="application/json">(.*?)</script>', html, re.S).group(1)
    assert '"paid_search": "Paid search"' in labels and '"markov": "Markov chain, per path (removal effects on each path)"' in labels
    assert '"mql": "Marketing qualified lead (MQL)"' in labels
    for chart in ("chart-channel", "chart-compare", "chart-spend", "chart-month", "chart-funnel", "chart-velocity"):
        assert f'id="{chart}-table"' in html


def test_dashboard_palette_has_a_colour_per_model():
    from pathlib import Path

    from attribution.models import AttributionModel

    js = Path("attribution/static/attribution/js/dashboard.js").read_text()
    palette = re.search(r"const PALETTE = \[(.*?)\];", js, re.S).group(1)
    colours = re.findall(r'"(#[0-9a-f]{6})"', palette)
    assert len(set(colours)) == len(colours) >= len(AttributionModel.choices)


def test_invalid_segment_condition_is_a_form_error(admin_client):
    response = admin_client.post(reverse("admin:scoring_segment_add"),
                                 {"name": "Broken", "description": "", "condition": "scroe >= 10"})
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["condition"]
    assert 'class="errorlist' in response.content.decode()
    assert not Segment.objects.filter(name="Broken").exists()


def test_stored_condition_gone_bad_shows_as_an_error(admin_client):
    segment = Segment.objects.create(name="Old", condition='country = "US"')
    Segment.objects.filter(pk=segment.pk).update(condition="no_such_field = 1")
    html = admin_client.get(reverse("admin:scoring_segment_change", args=[segment.pk])).content.decode()
    assert "errornote segment-condition-error" in html
    assert "Condition invalid:" in html


def test_credit_list_filters_channels_by_label(admin_client):
    html = admin_client.get(reverse("admin:attribution_attributioncredit_changelist")).content.decode()
    assert "?channel=paid_search" in html and ">Paid search<" in html
    assert "Markov chain, global (removal-effect shares)" in html  # the model filter, from the field's choices
