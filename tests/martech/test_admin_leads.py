"""The lead screens: timeline, writes through the services, search, actions,
export, and a changelist whose query count does not grow with the page."""
from __future__ import annotations

import csv
import io

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from martech.models import Event, Lead, LifecycleStage, StageTransition
from martech.services.leads import consent_record, identity_link, lead_change_stage, lead_upsert
from tests.factories import AccountFactory, EventFactory, LeadFactory, UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:martech_lead_changelist")
ADD = reverse("admin:martech_lead_add")


def change_url(lead):
    return reverse("admin:martech_lead_change", args=[lead.pk])


@pytest.fixture
def admin_client(client, superuser):
    client.force_login(superuser)
    return client


def _form_data(lead, **overrides):
    data = {
        "email": lead.email or "",
        "first_name": lead.first_name,
        "last_name": lead.last_name,
        "job_title": lead.job_title,
        "phone": str(lead.phone or ""),
        "company_name": lead.company_name,
        "country": lead.country,
        "region": lead.region,
        "postal_code": lead.postal_code,
        "time_zone": lead.time_zone,
        "lifecycle_stage": lead.lifecycle_stage_id or "",
        "stage_reason": "",
        "salesforce_lead_id": lead.salesforce_lead_id or "",
        "salesforce_contact_id": lead.salesforce_contact_id or "",
        "hubspot_id": lead.hubspot_id or "",
        "properties": "{}",
        "identities-TOTAL_FORMS": "0",
        "identities-INITIAL_FORMS": "0",
        "identities-MIN_NUM_FORMS": "0",
        "identities-MAX_NUM_FORMS": "0",
    }
    data.update(overrides)
    return data


# --- timeline ---------------------------------------------------------------


def test_change_page_shows_timeline_of_events_stage_changes_and_consent(admin_client, superuser):
    lead, _ = lead_upsert(data={"email": "tl@acme.example", "first_name": "Tia"}, source="test")
    EventFactory(lead=lead)  # a page_view
    lead_change_stage(lead=lead, to_stage="mql", reason="downloaded the ebook", actor=superuser)
    consent_record(lead=lead, channel="email", granted=True, source="form:newsletter")
    identity_link(lead=lead, kind="anonymous", value="anon-xyz")

    response = admin_client.get(change_url(lead))
    html = response.content.decode()
    assert response.status_code == 200
    assert "martech-timeline" in html
    assert "Page viewed" in html  # the catalog's label, not the code
    assert "page_view" not in html.split("martech-timeline", 1)[1].split("</table>", 1)[0]
    assert "Stage: Lead → Marketing qualified lead (MQL)" in html
    assert "downloaded the ebook (by root)" in html
    assert "Consent Email: granted" in html
    assert "anon-xyz" in html  # identities inline
    assert f"?lead__id__exact={lead.pk}" in html  # links to the full history


def test_timeline_costs_the_same_queries_however_long_the_history(admin_client):
    def page_queries(lead):
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(change_url(lead)).status_code == 200
        return len(ctx)

    short, long = LeadFactory(), LeadFactory()
    EventFactory(lead=short)
    for _ in range(30):
        EventFactory(lead=long)
    assert page_queries(short) == page_queries(long)


# --- writes through the services ----------------------------------------------


def test_add_normalizes_email_and_sets_default_stage_with_actor(admin_client, superuser):
    AccountFactory(domain="acme.example", name="Acme")
    response = admin_client.post(ADD, _form_data(Lead(), email="  Ann@ACME.example ", first_name="Ann", country="de"))
    assert response.status_code == 302, response.content.decode()[:3000]
    lead = Lead.objects.get()
    assert (lead.email, lead.country, lead.company_name) == ("ann@acme.example", "DE", "Acme")
    t = StageTransition.objects.get(lead=lead)
    assert t.to_stage.key == "lead" and t.actor == superuser and t.source == "admin"


def test_add_with_an_existing_email_in_other_case_is_a_form_error(admin_client):
    LeadFactory(email="bob@x.example")
    response = admin_client.post(ADD, _form_data(Lead(), email="BOB@x.example"))
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    assert Lead.objects.count() == 1


def test_add_with_bad_fields_shows_them_on_the_form(admin_client):
    response = admin_client.post(ADD, _form_data(Lead(), email="not-an-email", country="Germany"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "email" in errors and "country" in errors
    assert Lead.objects.count() == 0


def test_edit_changes_fields_and_stage_through_services(admin_client, superuser):
    lead, _ = lead_upsert(data={"email": "ed@x.example", "first_name": "Ed"}, source="test")
    sql = LifecycleStage.objects.get(key="sql")
    response = admin_client.post(
        change_url(lead),
        _form_data(lead, first_name="Edward", job_title="CTO", lifecycle_stage=sql.pk, stage_reason="booked a demo"),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    lead.refresh_from_db()
    assert (lead.first_name, lead.job_title, lead.lifecycle_stage.key) == ("Edward", "CTO", "sql")
    t = StageTransition.objects.filter(lead=lead).first()
    assert (t.to_stage.key, t.reason, t.actor, t.source) == ("sql", "booked a demo", superuser, "admin")


def test_edit_can_change_the_email_but_not_to_another_leads(admin_client):
    lead, _ = lead_upsert(data={"email": "typo@x.exmaple"}, source="test")
    LeadFactory(email="taken@x.example")
    response = admin_client.post(change_url(lead), _form_data(lead, email=" Fixed@X.example"))
    assert response.status_code == 302
    lead.refresh_from_db()
    assert lead.email == "fixed@x.example"
    response = admin_client.post(change_url(lead), _form_data(lead, email="TAKEN@x.example"))
    assert response.status_code == 200
    assert "already exists" in response.content.decode()
    lead.refresh_from_db()
    assert lead.email == "fixed@x.example"
    assert Lead.objects.count() == 2


def test_edit_can_clear_a_field(admin_client):
    lead, _ = lead_upsert(data={"email": "cl@x.example", "job_title": "CMO"}, source="test")
    response = admin_client.post(change_url(lead), _form_data(lead, job_title=""))
    assert response.status_code == 302
    lead.refresh_from_db()
    assert lead.job_title == ""


def test_stage_change_needs_a_reason(admin_client):
    lead, _ = lead_upsert(data={"email": "nr@x.example"}, source="test")
    mql = LifecycleStage.objects.get(key="mql")
    response = admin_client.post(change_url(lead), _form_data(lead, lifecycle_stage=mql.pk))
    assert response.status_code == 200
    assert "stage_reason" in response.context["adminform"].form.errors
    lead.refresh_from_db()
    assert lead.lifecycle_stage.key == "lead"


def test_service_error_on_save_rolls_back_and_is_shown(admin_client, monkeypatch):
    lead, _ = lead_upsert(data={"email": "race@x.example", "first_name": "A"}, source="test")
    from django.core.exceptions import ValidationError

    from martech.admin import leads as lead_admin

    def refuse(**kwargs):
        raise ValidationError({"first_name": ["Refused by the service."]})

    monkeypatch.setattr(lead_admin, "lead_upsert", refuse)
    response = admin_client.post(change_url(lead), _form_data(lead, first_name="B"), follow=True)
    assert response.status_code == 200
    text = response.content.decode()
    assert "irst_name: Refused by the service." in text  # the admin capitalizes messages
    assert "was changed successfully" not in text
    lead.refresh_from_db()
    assert lead.first_name == "A"
    assert not LogEntry.objects.exists()


# --- search -----------------------------------------------------------------


@pytest.mark.parametrize("q", ["find.me@acme.example", "FIND.ME@acme.example", "Zebedee", "Quux", "Quuxcorp"])
def test_changelist_search_by_email_name_and_company(admin_client, q):
    target = LeadFactory(
        email="find.me@acme.example", first_name="Zebedee", last_name="Quux", company_name="Quuxcorp Ltd"
    )
    LeadFactory(email="other@acme.example", first_name="Ann", last_name="Other", company_name="Else")
    response = admin_client.get(CHANGELIST, {"q": q})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [target]
    assert change_url(target) in response.content.decode()


# --- actions ----------------------------------------------------------------


def _action(client, action, leads, **extra):
    data = {"action": action, "_selected_action": [lead.pk for lead in leads], **extra}
    return client.post(CHANGELIST, data)


def test_change_stage_action_asks_then_changes_and_logs(admin_client, superuser):
    leads = [LeadFactory(), LeadFactory()]
    confirm = _action(admin_client, "change_lifecycle_stage", leads)
    assert confirm.status_code == 200
    assert "New stage" in confirm.content.decode()
    assert not StageTransition.objects.exists()

    mql = LifecycleStage.objects.get(key="mql")
    done = _action(admin_client, "change_lifecycle_stage", leads, apply="yes", stage=mql.pk, reason="webinar list")
    assert done.status_code == 302
    for lead in leads:
        lead.refresh_from_db()
        assert lead.lifecycle_stage == mql
    assert StageTransition.objects.filter(actor=superuser, reason="webinar list", source="admin").count() == 2
    assert LogEntry.objects.filter(change_message__contains="webinar list").count() == 2


def test_change_stage_action_without_reason_shows_the_form_again(admin_client):
    lead = LeadFactory()
    mql = LifecycleStage.objects.get(key="mql")
    response = _action(admin_client, "change_lifecycle_stage", [lead], apply="yes", stage=mql.pk, reason="")
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    assert not StageTransition.objects.exists()


def test_merge_action_keeps_the_chosen_lead(admin_client):
    older = LeadFactory(email="dup1@x.example", job_title="")
    newer = LeadFactory(email="dup2@x.example", job_title="VP")
    EventFactory(lead=newer)
    confirm = _action(admin_client, "merge_leads", [older, newer])
    assert confirm.status_code == 200
    assert "dup1@x.example" in confirm.content.decode() and "dup2@x.example" in confirm.content.decode()

    done = _action(admin_client, "merge_leads", [older, newer], apply="yes", primary=older.pk, reason="same person")
    assert done.status_code == 302
    assert list(Lead.objects.all()) == [older]
    older.refresh_from_db()
    assert older.job_title == "VP"
    assert Event.objects.get().lead == older
    assert LogEntry.objects.filter(change_message__contains="dup2@x.example").exists()


def test_merge_action_needs_exactly_two(admin_client):
    leads = [LeadFactory(), LeadFactory(), LeadFactory()]
    response = _action(admin_client, "merge_leads", leads, apply="yes", primary=leads[0].pk, reason="x")
    assert response.status_code == 302
    assert Lead.objects.count() == 3


def test_merge_needs_delete_permission(client):
    user = UserFactory(username="editor")
    from django.contrib.auth.models import Permission

    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_lead", "change_lead"]))
    client.force_login(user)
    response = client.get(CHANGELIST)
    actions = [name for name, _ in response.context["action_form"].fields["action"].choices]
    assert "change_lifecycle_stage" in actions and "merge_leads" not in actions


# --- export -----------------------------------------------------------------


def test_export_honours_the_changelist_filters(admin_client):
    mql = LifecycleStage.objects.get(key="mql")
    LeadFactory(email="in@x.example", lifecycle_stage=mql, phone="+14155550123")
    LeadFactory(email="out@x.example")
    model_admin = admin.site._registry[Lead]
    formats = [f().get_title() for f in model_admin.get_export_formats()]
    url = reverse("admin:martech_lead_export") + f"?lifecycle_stage__id__exact={mql.pk}"
    page = admin_client.get(url)
    assert page.status_code == 200
    fields = {name: "on" for name in page.context["form"].fields if name.startswith("leadexportresource_")}
    response = admin_client.post(url, {"format": formats.index("csv"), "resource": 0, **fields})
    assert response.status_code == 200, response.content[:2000]
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert [(r["email"], r["lifecycle_stage"], r["phone"]) for r in rows] == [("in@x.example", "mql", "+14155550123")]


# --- speed ------------------------------------------------------------------


def test_changelist_queries_do_not_grow_with_the_page_size(admin_client, monkeypatch):
    owner = UserFactory(username="owner1")
    accounts = [AccountFactory() for _ in range(3)]
    stages = list(LifecycleStage.objects.all())
    Lead.objects.bulk_create(
        [
            Lead(
                email=f"bulk{i}@x.example",
                account=accounts[i % 3],
                owner=owner,
                lifecycle_stage=stages[i % len(stages)],
            )
            for i in range(120)
        ]
    )
    model_admin = admin.site._registry[Lead]

    def queries(per_page):
        monkeypatch.setattr(model_admin, "list_per_page", per_page)
        with CaptureQueriesContext(connection) as ctx:
            response = admin_client.get(CHANGELIST)
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) == per_page
        return len(ctx)

    assert queries(10) == queries(100)
    # And no query counts the whole table for a "N total" link.
    with CaptureQueriesContext(connection) as ctx:
        admin_client.get(CHANGELIST)
    counts = [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"].upper()]
    assert all("LIMIT" in sql.upper() or "pg_class" in sql for sql in counts), counts
