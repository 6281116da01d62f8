"""/api/v1/opportunities and /api/v1/attribution/spend, and the recompute
that opportunity changes queue."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_tz
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from attribution import services
from attribution.models import AttributionCredit, CampaignSpend, Opportunity, OpportunityStageChange
from attribution.services import opportunity_change_stage, opportunity_set_contact, opportunity_upsert, stage_for
from martech.models import ApiClient
from tests.factories import CampaignFactory, EventFactory, LeadFactory
from tests.martech.api_support import *  # noqa: F403 (fixtures)
from tests.martech.api_support import ALL_SCOPES, error_fields

pytestmark = pytest.mark.django_db

READ, WRITE = ApiClient.Scope.ATTRIBUTION_READ.value, ApiClient.Scope.ATTRIBUTION_WRITE.value
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=dt_tz.utc)


@pytest.fixture
def api(token_api):
    return token_api(*ALL_SCOPES)


@pytest.fixture
def queued(monkeypatch):
    """The recomputes queued (opportunity ids), in order."""
    calls: list[int] = []
    monkeypatch.setattr(services, "async_task", lambda func, opp_id, **kw: calls.append(opp_id))
    return calls


# --- create, detail -----------------------------------------------------------


def test_create_with_contacts_records_stage_history_and_queues_one_recompute(api, queued, django_capture_on_commit_callbacks):
    a, b = LeadFactory(), LeadFactory()
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post("/api/v1/opportunities", {
            "name": "Acme expansion", "amount": "12500.50", "currency": "eur", "stage": "qualification",
            "created_at": "2026-03-01T12:00:00Z", "source": "paid_search", "hubspot_id": "hs-1",
            "contacts": [{"lead": a.pk, "role": "buyer"}, {"lead": b.pk, "role": "champion", "is_primary": True}],
        }, format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert (body["amount"], body["currency"], body["stage"], body["pipeline"]) == ("12500.50", "EUR", "qualification", "default")
    assert [(c["lead"], c["role"], c["is_primary"]) for c in body["contacts"]] == [(b.pk, "champion", True), (a.pk, "buyer", False)]
    assert [(h["from_stage"], h["to_stage"]) for h in body["stage_history"]] == [(None, "qualification")]
    assert body["is_closed"] is False and body["closed_at"] is None
    # creation, and two contacts added, in one transaction: one recompute
    assert queued == [body["id"]]

    # the same CRM id again updates (200), it does not duplicate
    r2 = api.post("/api/v1/opportunities", {"name": "Acme expansion II", "hubspot_id": "hs-1"}, format="json")
    assert r2.status_code == 200 and r2.json()["id"] == body["id"] and r2.json()["name"] == "Acme expansion II"
    assert Opportunity.objects.count() == 1

    d = api.get(f"/api/v1/opportunities/{body['id']}")
    assert d.status_code == 200 and d.json()["name"] == "Acme expansion II"


@pytest.mark.parametrize("payload, field", [
    ({"amount": "10"}, "name"),
    ({"name": "x", "amount": "-1"}, "amount"),
    ({"name": "x", "amount": "1.234"}, "amount"),
    ({"name": "x", "stage": "nope"}, "stage"),
    ({"name": "x", "pipeline": "nope"}, "pipeline"),
    ({"name": "x", "currency": "E1R"}, "currency"),
    ({"name": "x", "source": "carrier_pigeon"}, "source"),
    ({"name": "x", "colour": "red"}, "colour"),
    ({"name": "x", "contacts": [{"lead": 999999, "is_primary": True}]}, "contacts.0.lead"),
])
def test_create_errors_name_the_field(api, payload, field):
    r = api.post("/api/v1/opportunities", payload, format="json")
    assert r.status_code == 400, r.content
    assert field in error_fields(r) and r.json()["error"]["code"] == "invalid"
    assert Opportunity.objects.count() == 0


def test_contacts_need_exactly_one_primary_and_a_bad_list_changes_nothing(api):
    a, b = LeadFactory(), LeadFactory()
    r = api.post("/api/v1/opportunities", {"name": "x", "contacts": [{"lead": a.pk}, {"lead": b.pk}]}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"contacts"}
    r = api.post("/api/v1/opportunities", {"name": "x", "contacts": [
        {"lead": a.pk, "is_primary": True}, {"lead": b.pk, "is_primary": True}]}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"contacts"}
    # nothing half-written: the deal was not created either
    assert Opportunity.objects.count() == 0


# --- update, close ------------------------------------------------------------


def test_patch_amount_stage_and_contacts(api, queued, django_capture_on_commit_callbacks):
    a, b, c = LeadFactory(), LeadFactory(), LeadFactory()
    with django_capture_on_commit_callbacks(execute=True):  # committed, as a separate request would be
        opp, _ = opportunity_upsert(data={"name": "Deal", "amount": Decimal("100.00"), "created_at": T0}, source="test")
        opportunity_set_contact(opportunity=opp, lead=a, is_primary=True)
        opportunity_set_contact(opportunity=opp, lead=b)
    queued.clear()
    url = f"/api/v1/opportunities/{opp.pk}"

    with django_capture_on_commit_callbacks(execute=True):
        r = api.patch(url, {"name": "Renamed"}, format="json")
    assert r.status_code == 200 and queued == []  # the name moves no credit

    with django_capture_on_commit_callbacks(execute=True):
        r = api.patch(url, {"amount": "250.00", "stage": "proposal"}, format="json")
    assert r.status_code == 200, r.content
    assert (r.json()["amount"], r.json()["stage"]) == ("250.00", "proposal")
    assert [h["to_stage"] for h in r.json()["stage_history"]] == ["prospecting", "proposal"]
    assert queued == [opp.pk]

    with django_capture_on_commit_callbacks(execute=True):
        r = api.patch(url, {"contacts": [{"lead": c.pk, "is_primary": True, "role": "buyer"}, {"lead": a.pk}]}, format="json")
    assert r.status_code == 200, r.content
    assert [(x["lead"], x["is_primary"]) for x in r.json()["contacts"]] == [(c.pk, True), (a.pk, False)]
    assert queued == [opp.pk, opp.pk]

    r = api.patch(url, {"stage": "no-such"}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"stage"}
    r = api.patch(url, {"amount": "abc"}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"amount"}
    assert api.patch("/api/v1/opportunities/999999", {"name": "x"}, format="json").status_code == 404


def test_close_won_sets_closed_at_and_history_once(api, queued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        opp, _ = opportunity_upsert(data={"name": "Deal", "created_at": T0}, source="test")
    queued.clear()
    url = f"/api/v1/opportunities/{opp.pk}/close"
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(url, {"won": True, "closed_at": "2026-04-01T00:00:00Z"}, format="json")
    assert r.status_code == 200, r.content
    body = r.json()
    assert (body["stage"], body["is_won"], body["is_closed"], body["closed_at"]) == ("closed_won", True, True, "2026-04-01T00:00:00Z")
    assert queued == [opp.pk]
    again = api.post(url, {"won": True}, format="json")
    assert again.status_code == 200 and OpportunityStageChange.objects.filter(opportunity=opp).count() == 2
    r = api.post(url, {"won": False, "closed_at": "2020-01-01T00:00:00Z"}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"closed_at"}
    assert api.post(url, {}, format="json").status_code == 400


# --- list ---------------------------------------------------------------------


def test_list_filters_and_cursor_pages_at_a_fixed_query_count(api):
    lead = LeadFactory()
    opps = []
    for i in range(5):
        opp, _ = opportunity_upsert(data={"name": f"D{i}", "created_at": T0 + timedelta(days=i)}, source="test")
        opportunity_set_contact(opportunity=opp, lead=LeadFactory(), is_primary=True)
        opps.append(opp)
    opportunity_set_contact(opportunity=opps[1], lead=lead)
    opportunity_change_stage(opportunity=opps[0], to_stage=stage_for(pipeline=opps[0].pipeline, key="closed_won"), source="t")

    r = api.get("/api/v1/opportunities", {"page_size": 2})
    assert r.status_code == 200
    assert [o["name"] for o in r.json()["results"]] == ["D4", "D3"]
    r2 = api.get(r.json()["next"])
    assert [o["name"] for o in r2.json()["results"]] == ["D2", "D1"]

    assert [o["name"] for o in api.get("/api/v1/opportunities", {"is_closed": "true"}).json()["results"]] == ["D0"]
    assert len(api.get("/api/v1/opportunities", {"is_closed": "false"}).json()["results"]) == 4
    assert [o["name"] for o in api.get("/api/v1/opportunities", {"stage": "closed_won"}).json()["results"]] == ["D0"]
    assert [o["name"] for o in api.get("/api/v1/opportunities", {"lead": lead.pk}).json()["results"]] == ["D1"]
    got = api.get("/api/v1/opportunities", {"created_at_after": "2026-03-03T00:00:00Z"}).json()["results"]
    assert [o["name"] for o in got] == ["D4", "D3", "D2"]
    r = api.get("/api/v1/opportunities", {"created_at_after": "yesterday"})
    assert r.status_code == 400 and error_fields(r) == {"created_at_after"}

    # the page costs the same queries for 2 rows as for 5 (no query per row)
    def count(size):
        with CaptureQueriesContext(connection) as ctx:
            assert api.get("/api/v1/opportunities", {"page_size": size}).status_code == 200
        return len(ctx.captured_queries)

    assert count(2) == count(5)


def test_scopes(token_api):
    opp, _ = opportunity_upsert(data={"name": "Deal"}, source="test")
    reader = token_api(READ)
    assert reader.get("/api/v1/opportunities").status_code == 200
    r = reader.patch(f"/api/v1/opportunities/{opp.pk}", {"name": "x"}, format="json")
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    assert reader.post("/api/v1/attribution/spend", {}, format="json").status_code == 403
    nobody = token_api(ApiClient.Scope.LEADS_READ.value)
    assert nobody.get("/api/v1/opportunities").status_code == 403
    assert nobody.get("/api/v1/attribution/spend").status_code == 403
    writer = token_api(READ, WRITE)
    assert writer.patch(f"/api/v1/opportunities/{opp.pk}", {"name": "x"}, format="json").status_code == 200


def test_analyst_session_reads_but_cannot_write(session_api, analyst):
    opp, _ = opportunity_upsert(data={"name": "Deal"}, source="test")
    api = session_api(analyst)
    assert api.get(f"/api/v1/opportunities/{opp.pk}").status_code == 200
    assert api.patch(f"/api/v1/opportunities/{opp.pk}", {"name": "x"}, format="json").status_code == 403


# --- spend --------------------------------------------------------------------


def test_spend_upsert_and_list(api):
    c1, c2 = CampaignFactory(channel="paid_search"), CampaignFactory(channel="email")
    r = api.post("/api/v1/attribution/spend", {"campaign": c1.pk, "date": "2026-03-01", "amount": "120.50", "clicks": 30}, format="json")
    assert r.status_code == 201, r.content
    assert (r.json()["amount"], r.json()["currency"], r.json()["clicks"], r.json()["impressions"]) == ("120.50", "USD", 30, 0)
    r = api.post("/api/v1/attribution/spend", {"campaign": c1.pk, "date": "2026-03-01", "amount": "99.00", "currency": "eur"}, format="json")
    assert r.status_code == 200 and r.json()["amount"] == "99.00" and r.json()["currency"] == "EUR"
    api.post("/api/v1/attribution/spend", {"campaign": c2.pk, "date": "2026-03-02", "amount": "5"}, format="json")
    assert CampaignSpend.objects.count() == 2
    rows = api.get("/api/v1/attribution/spend").json()["results"]
    assert [(x["campaign"], x["date"]) for x in rows] == [(c2.pk, "2026-03-02"), (c1.pk, "2026-03-01")]
    assert [x["campaign"] for x in api.get("/api/v1/attribution/spend", {"channel": "paid_search"}).json()["results"]] == [c1.pk]
    assert len(api.get("/api/v1/attribution/spend", {"date_after": "2026-03-02"}).json()["results"]) == 1
    for payload, field in [
        ({"campaign": c1.pk, "date": "2026-13-01", "amount": "1"}, "date"),
        ({"campaign": c1.pk, "date": "2026-03-01", "amount": "-1"}, "amount"),
        ({"campaign": 999999, "date": "2026-03-01", "amount": "1"}, "campaign"),
        ({"campaign": c1.pk, "date": "2026-03-01", "amount": "1", "clicks": -3}, "clicks"),
        ({"campaign": c1.pk, "date": "2026-03-01", "amount": "1", "cost": 3}, "cost"),
    ]:
        r = api.post("/api/v1/attribution/spend", payload, format="json")
        assert r.status_code == 400 and error_fields(r) == {field}, (payload, r.content)


# --- the recompute trigger ----------------------------------------------------


def test_recompute_once_per_transaction_and_never_on_rollback(queued, django_capture_on_commit_callbacks):
    lead = LeadFactory()
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            opp, _ = opportunity_upsert(data={"name": "Deal", "created_at": T0}, source="test")
            opportunity_set_contact(opportunity=opp, lead=lead, is_primary=True)
            opportunity_upsert(data={"amount": Decimal("5.00")}, source="test", opportunity=opp)
            opportunity_change_stage(opportunity=opp, to_stage=stage_for(pipeline=opp.pipeline, key="closed_won"), source="t")
    assert queued == [opp.pk]

    with django_capture_on_commit_callbacks(execute=True):
        try:
            with transaction.atomic():
                opportunity_upsert(data={"amount": Decimal("7.00")}, source="test", opportunity=opp)
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
    assert queued == [opp.pk]
    # a savepoint rolled back drops its pending recompute; a later change in the outer transaction queues again
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            try:
                with transaction.atomic():
                    opportunity_upsert(data={"amount": Decimal("8.00")}, source="test", opportunity=opp)
                    raise RuntimeError("inner rolled back")
            except RuntimeError:
                pass
            opportunity_upsert(data={"closed_at": T0 + timedelta(days=40)}, source="test", opportunity=opp)
    assert queued == [opp.pk, opp.pk]


@pytest.mark.parametrize("change", ["amount", "contacts", "stage", "closed_at"])
def test_recompute_runs_the_task_and_credits_follow_the_change(change, monkeypatch, django_capture_on_commit_callbacks, api):
    """The queued task, run, leaves credits that match the new state
    (idempotent: running it twice leaves the same rows)."""
    from attribution import tasks

    ran: list[int] = []

    def run_now(func, opp_id, **kw):
        ran.append(opp_id)
        tasks.opportunity_attribute(opp_id)

    monkeypatch.setattr(services, "async_task", run_now)
    a, b = LeadFactory(), LeadFactory()
    EventFactory(lead=a, occurred_at=T0 - timedelta(days=3), channel="email", utm_source="x")
    EventFactory(lead=a, occurred_at=T0 + timedelta(days=5), channel="organic_search", utm_source="x")
    EventFactory(lead=b, occurred_at=T0 - timedelta(days=2), channel="paid_search", utm_source="x")
    from attribution.touchpoints import touchpoints_rebuild

    touchpoints_rebuild(lead_ids=[a.pk, b.pk])
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post("/api/v1/opportunities", {
            "name": "Deal", "amount": "100.00", "created_at": "2026-03-01T12:00:00Z", "stage": "closed_won",
            "closed_at": "2026-03-10T00:00:00Z", "contacts": [{"lead": a.pk, "is_primary": True}],
        }, format="json")
    assert r.status_code == 201, r.content
    opp_id = r.json()["id"]
    linear = AttributionCredit.objects.filter(model="linear", opportunity_id=opp_id)
    assert sorted(linear.values_list("channel", "credit")) == [("email", Decimal("50.00")), ("organic_search", Decimal("50.00"))]

    patch = {
        "amount": {"amount": "300.00"},
        "contacts": {"contacts": [{"lead": a.pk, "is_primary": True}, {"lead": b.pk}]},
        "stage": {"stage": "proposal"},
        "closed_at": {"closed_at": "2026-03-02T00:00:00Z"},  # the window now ends before the organic touch
    }[change]
    with django_capture_on_commit_callbacks(execute=True):
        r = api.patch(f"/api/v1/opportunities/{opp_id}", patch, format="json")
    assert r.status_code == 200, r.content
    assert ran == [opp_id, opp_id]
    rows = sorted(linear.values_list("channel", "credit", "is_won"))
    expected = {
        "amount": [("email", Decimal("150.00"), True), ("organic_search", Decimal("150.00"), True)],
        # three equal weights: the cent left over goes to the earliest touch
        "contacts": [("email", Decimal("33.34"), True), ("organic_search", Decimal("33.33"), True), ("paid_search", Decimal("33.33"), True)],
        # reopened: open pipeline, counted to now
        "stage": [("email", Decimal("50.00"), False), ("organic_search", Decimal("50.00"), False)],
        "closed_at": [("email", Decimal("100.00"), True)],
    }[change]
    assert rows == expected
    before = list(AttributionCredit.objects.order_by("model", "id").values_list("model", "channel", "credit"))
    tasks.opportunity_attribute(opp_id)
    assert sorted(AttributionCredit.objects.values_list("model", "channel", "credit")) == sorted(before)


# --- import with a token; closed_at not before created_at -----------------------


def test_import_works_for_an_api_client_token(token_api):
    """The stage history's actor is a User row: a token's stand-in user must
    not be written there (it was a 500 for every token)."""
    api = token_api(READ, WRITE)
    LeadFactory(email="buyer@example.org")
    rows = [{"name": "Token deal", "amount": "900", "stage": "closed_won", "created_at": "2026-03-01",
             "closed_at": "2026-03-09", "hubspot_id": "hs-tok", "contacts": "buyer@example.org"}]
    r = api.post("/api/v1/opportunities/import", {"rows": rows}, format="json")
    assert r.status_code == 200, r.content
    assert r.json() == {"created": 1, "updated": 0}
    change = OpportunityStageChange.objects.get(opportunity__hubspot_id="hs-tok")
    assert change.actor is None and change.source == "csv import"
    # and through the CSV body too, as an update
    r = api.post("/api/v1/opportunities/import", {"csv": "name,amount,hubspot_id\nToken deal,950,hs-tok\n"}, format="json")
    assert r.json() == {"created": 0, "updated": 1}
    assert Opportunity.objects.get(hubspot_id="hs-tok").amount == Decimal("950.00")
    # without the write scope: refused, not a 500
    r = token_api(READ).post("/api/v1/opportunities/import", {"rows": rows}, format="json")
    assert r.status_code == 403


def test_closed_before_created_is_refused_on_every_path(api, superuser, client):
    before = {"created_at": "2026-03-10T00:00:00Z", "closed_at": "2026-03-09T00:00:00Z"}
    # create: both given
    r = api.post("/api/v1/opportunities", {"name": "Early", "stage": "closed_won", **before}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"closed_at"}
    # edit: closed_at before the stored created_at (the serializer sees one field; the model clean both)
    opp = api.post("/api/v1/opportunities", {"name": "Ok", "created_at": "2026-03-10T00:00:00Z"}, format="json").json()
    r = api.patch(f"/api/v1/opportunities/{opp['id']}", {"closed_at": "2026-03-01T00:00:00Z"}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"closed_at"}
    # close with an earlier date
    r = api.post(f"/api/v1/opportunities/{opp['id']}/close", {"won": True, "closed_at": "2026-03-01T00:00:00Z"}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"closed_at"}
    # moving created_at after an existing close
    api.post(f"/api/v1/opportunities/{opp['id']}/close", {"won": True, "closed_at": "2026-03-12T00:00:00Z"}, format="json")
    r = api.patch(f"/api/v1/opportunities/{opp['id']}", {"created_at": "2026-03-13T00:00:00Z"}, format="json")
    assert r.status_code == 400 and error_fields(r) == {"closed_at"}
    # import: the row and field are named, nothing written
    rows = [{"name": "Early", "stage": "closed_won", "created_at": "2026-03-10", "closed_at": "2026-03-09"}]
    r = api.post("/api/v1/opportunities/import", {"rows": rows}, format="json")
    assert r.status_code == 400 and "closed_at" in str(r.json()["error"]["fields"]["row 2"])
    # admin CSV import: the same service, an error message and nothing written
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(superuser)
    upload = SimpleUploadedFile("o.csv", b"name,stage,created_at,closed_at\nEarly,closed_won,2026-03-10,2026-03-09\n")
    r = client.post("/admin/attribution/opportunity/import-csv/", {"file": upload}, follow=True)
    assert "creation (created_at)" in r.content.decode()
    assert Opportunity.objects.count() == 1
    stored = Opportunity.objects.get()
    assert stored.closed_at >= stored.created_at


def test_closed_before_created_in_the_services():
    opp, _ = opportunity_upsert(data={"name": "Deal", "created_at": T0}, source="test")
    with pytest.raises(Exception) as exc:
        opportunity_upsert(data={"closed_at": T0 - timedelta(seconds=1)}, opportunity=opp, source="test")
    assert exc.value.message_dict == {"closed_at": ["Must not be before the opportunity's creation (created_at)."]}
    won = stage_for(pipeline=opp.pipeline, key="closed_won")
    with pytest.raises(Exception) as exc:
        opportunity_change_stage(opportunity=opp, to_stage=won, source="test", at=T0 - timedelta(days=1))
    assert set(exc.value.message_dict) == {"closed_at"}
    with pytest.raises(Exception) as exc:
        opportunity_upsert(data={"name": "Early", "stage": "closed_won", "created_at": T0, "closed_at": T0 - timedelta(days=1)},
                           source="test")
    assert set(exc.value.message_dict) == {"closed_at"}
    assert Opportunity.objects.count() == 1 and Opportunity.objects.get().closed_at is None
