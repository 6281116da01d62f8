"""Attribution stays current without a full run: a lead merge, a deal's
deletion and every change that moves credits recompute the affected deals'
touchpoints, credits and rollup rows, and the result equals a full rebuild."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_tz
from decimal import Decimal

import pytest
from django.db import connection

from attribution import services, tasks
from attribution.computation import ALL_MODELS, attribution_compute, rollup_refresh
from attribution.models import AttributionCredit, AttributionRollup, Opportunity, Touchpoint
from attribution.selectors import attribution_report
from attribution.services import (
    opportunity_change_stage, opportunity_delete, opportunity_remove_contact, opportunity_set_contact,
    opportunity_upsert, stage_for,
)
from attribution.touchpoints import touchpoints_rebuild
from martech.models import ApiClient
from martech.services.leads import lead_merge
from tests.factories import EventFactory, LeadFactory
from tests.martech.api_support import *  # noqa: F403 (fixtures)

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 2, 2, 9, 0, tzinfo=dt_tz.utc)
FIELDS = ("model", "basis", "day", "channel", "campaign_id", "currency", "credit", "company_credit", "unconverted",
          "rate_date_first", "rate_date_last", "first_of_opportunity", "first_of_channel", "first_of_campaign",
          "first_of_channel_campaign")


def _rollup():
    return sorted(AttributionRollup.objects.values_list(*FIELDS), key=str)


def _assert_rollup_equals_a_full_rebuild():
    incremental = _rollup()
    rollup_refresh(models=list(ALL_MODELS))
    assert incremental == _rollup()


@pytest.fixture
def run_tasks(monkeypatch, django_capture_on_commit_callbacks):
    """Queued attribution tasks run at once (after commit), as the cluster would."""
    from attribution import receivers

    ran: list[tuple] = []

    def run(func, *args, **kw):
        ran.append((func, *args))
        name = func.rsplit(".", 1)[1]
        getattr(tasks, name)(*args)

    monkeypatch.setattr(services, "async_task", run)
    monkeypatch.setattr(receivers, "async_task", run)
    return ran


def _lead_with_touches(channels, start, *, created_at):
    lead = LeadFactory()
    lead.created_at = created_at
    lead.save(update_fields=["created_at"])
    for i, channel in enumerate(channels):
        EventFactory(lead=lead, occurred_at=start + timedelta(hours=i), channel=channel, utm_source="x")
    return lead


def _won_deal(leads, amount="1000.00", created=T0 + timedelta(days=10), closed=T0 + timedelta(days=20)):
    opp, _ = opportunity_upsert(data={"name": "Deal", "amount": Decimal(amount), "created_at": created}, source="t")
    for i, lead in enumerate(leads):
        opportunity_set_contact(opportunity=opp, lead=lead, is_primary=i == 0)
    opportunity_change_stage(opportunity=opp, to_stage=stage_for(pipeline=opp.pipeline, key="closed_won"), source="t",
                             at=closed)
    return opp


def test_lead_merge_recomputes_touchpoints_credits_and_new_leads(run_tasks, django_capture_on_commit_callbacks):
    primary = _lead_with_touches(["email", "paid_search"], T0, created_at=T0 + timedelta(hours=1, minutes=30))
    duplicate = _lead_with_touches(["referral", "display"], T0 - timedelta(days=3), created_at=T0 - timedelta(days=2))
    touchpoints_rebuild(lead_ids=[primary.pk, duplicate.pk])
    deal = _won_deal([primary])
    other = _won_deal([duplicate], amount="500.00")
    attribution_compute()
    linear = AttributionCredit.objects.filter(model="linear", opportunity=deal)
    assert sorted(linear.values_list("channel", flat=True)) == ["email", "paid_search"]
    assert Touchpoint.objects.filter(is_lead_creation=True).count() == 2

    with django_capture_on_commit_callbacks(execute=True):
        lead_merge(primary=primary, duplicate=duplicate)
    assert ("attribution.tasks.lead_merged", primary.pk) in run_tasks
    # The deal now sees the duplicate's earlier touches; one lead, one lead-creation touch (the
    # last at or before the kept lead's creation, now the duplicate's earlier one).
    assert sorted(linear.values_list("channel", "credit")) == [
        ("display", Decimal("250.00")), ("email", Decimal("250.00")), ("paid_search", Decimal("250.00")),
        ("referral", Decimal("250.00"))]
    creation = Touchpoint.objects.get(lead=primary, is_lead_creation=True)
    assert creation.channel == "display"
    assert not Touchpoint.objects.filter(lead_id=duplicate.pk).exists()
    # the duplicate's deal moved over with its role and was recomputed too
    assert set(AttributionCredit.objects.filter(model="linear", opportunity=other).values_list("channel", flat=True)) == {
        "referral", "display", "email", "paid_search"}
    rows = {r["group"]: r["new_leads"] for r in attribution_report(model="linear", group_by="channel")}
    assert rows["display"] == 1 and sum(rows.values()) == 1
    _assert_rollup_equals_a_full_rebuild()


@pytest.mark.parametrize("change", ["amount", "currency", "stage", "created_at", "add_contact", "remove_contact"])
def test_each_change_recomputes_the_deal_and_its_rollup_days(change, run_tasks, django_capture_on_commit_callbacks):
    a = _lead_with_touches(["email", "paid_search"], T0, created_at=T0)
    b = _lead_with_touches(["display"], T0 + timedelta(days=1), created_at=T0)
    touchpoints_rebuild(lead_ids=[a.pk, b.pk])
    with django_capture_on_commit_callbacks(execute=True):
        deal = _won_deal([a])
    keep = _won_deal([b], amount="10.00")
    attribution_compute()
    before = _rollup()
    with django_capture_on_commit_callbacks(execute=True):
        if change == "amount":
            opportunity_upsert(data={"amount": Decimal("400.00")}, opportunity=deal, source="t")
        elif change == "currency":
            opportunity_upsert(data={"currency": "EUR"}, opportunity=deal, source="t")
        elif change == "stage":
            opportunity_change_stage(opportunity=deal, to_stage=stage_for(pipeline=deal.pipeline, key="proposal"),
                                     source="t")
        elif change == "created_at":
            opportunity_upsert(data={"created_at": T0 + timedelta(days=12)}, opportunity=deal, source="t")
        elif change == "add_contact":
            opportunity_set_contact(opportunity=deal, lead=b, source="t")
        else:
            opportunity_remove_contact(opportunity=deal, lead=a, source="t")
    assert ("attribution.tasks.opportunity_attribute", deal.pk) in run_tasks
    assert _rollup() != before
    deal.refresh_from_db()
    credits = AttributionCredit.objects.filter(opportunity=deal)
    for model in ALL_MODELS:
        assert sum(credits.filter(model=model).values_list("credit", flat=True)) == deal.amount, model
    assert set(credits.values_list("currency", flat=True)) == {deal.currency}
    assert set(credits.values_list("is_won", flat=True)) == {deal.stage.is_won}
    assert AttributionCredit.objects.filter(opportunity=keep).count() > 0
    _assert_rollup_equals_a_full_rebuild()


def test_delete_removes_credits_and_rollup_rows():
    a = _lead_with_touches(["email", "paid_search"], T0, created_at=T0)
    b = _lead_with_touches(["email"], T0, created_at=T0)
    touchpoints_rebuild(lead_ids=[a.pk, b.pk])
    deal = _won_deal([a], amount="700.00")
    keep = _won_deal([b], amount="10.00", closed=T0 + timedelta(days=21))
    attribution_compute()
    revenue = {r["group"]: r["attributed_revenue"] for r in attribution_report(model="linear", group_by="channel")}
    assert revenue == {"email": Decimal("360.00"), "paid_search": Decimal("350.00")}
    assert opportunity_delete(opportunity=deal, source="test")["opportunities"] == 1
    assert not Opportunity.objects.filter(pk=deal.pk).exists()
    assert not AttributionCredit.objects.filter(opportunity_id=deal.pk).exists()
    revenue = {r["group"]: r["attributed_revenue"] for r in attribution_report(model="linear", group_by="channel")
               if r["attributed_revenue"]}
    assert revenue == {"email": Decimal("10.00")}
    assert not AttributionRollup.objects.filter(day=(T0 + timedelta(days=20)).date()).exists()
    _assert_rollup_equals_a_full_rebuild()
    # again: nothing to do, nothing fails
    assert opportunity_delete(opportunity=deal, source="test") == {"opportunities": 0, "credits": 0, "crm_deletes": 0}
    assert AttributionCredit.objects.filter(opportunity=keep).exists()


def _deal_with_credits():
    a = _lead_with_touches(["email"], T0, created_at=T0)
    touchpoints_rebuild(lead_ids=[a.pk])
    deal = _won_deal([a], amount="50.00")
    attribution_compute(opportunity_ids=[deal.pk])
    assert AttributionRollup.objects.exists()
    return deal


def test_delete_through_the_api_by_scope_and_role(token_api, session_api, marketing_ops, sales_ops, analyst):
    deal = _deal_with_credits()
    read, write = ApiClient.Scope.ATTRIBUTION_READ.value, ApiClient.Scope.ATTRIBUTION_WRITE.value
    assert token_api(read).delete(f"/api/v1/opportunities/{deal.pk}").status_code == 403
    for user in (sales_ops, analyst):
        assert session_api(user).delete(f"/api/v1/opportunities/{deal.pk}").status_code == 403
    assert Opportunity.objects.filter(pk=deal.pk).exists()
    r = token_api(read, write).delete(f"/api/v1/opportunities/{deal.pk}")
    assert r.status_code == 204, r.content
    assert not AttributionCredit.objects.exists() and not AttributionRollup.objects.exists()
    r = token_api(read, write).delete(f"/api/v1/opportunities/{deal.pk}")
    assert r.status_code == 404 and r.json()["error"]["code"]
    deal = _deal_with_credits()
    assert session_api(marketing_ops).delete(f"/api/v1/opportunities/{deal.pk}").status_code == 204
    assert not AttributionRollup.objects.exists()


def test_delete_in_the_admin_by_role(client, superuser, marketing_ops, analyst):
    deal = _deal_with_credits()
    url = f"/admin/attribution/opportunity/{deal.pk}/delete/"
    client.force_login(analyst)
    assert client.post(url, {"post": "yes"}).status_code == 403
    client.force_login(marketing_ops)
    page = client.get(url)
    assert page.status_code == 200 and b"Are you sure" in page.content
    r = client.post(url, {"post": "yes"})
    assert r.status_code == 302
    assert not Opportunity.objects.exists() and not AttributionCredit.objects.exists()
    assert not AttributionRollup.objects.exists()
    # the list's bulk action, as a superuser
    deals = [_deal_with_credits(), _deal_with_credits()]
    client.force_login(superuser)
    r = client.post("/admin/attribution/opportunity/", {"action": "delete_selected", "post": "yes",
                                                        "_selected_action": [d.pk for d in deals]})
    assert r.status_code == 302
    assert not Opportunity.objects.exists() and not AttributionRollup.objects.exists()


def test_delete_is_in_the_api_schema():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    op = schema["paths"]["/api/v1/opportunities/{id}/"]["delete"]
    assert "204" in op["responses"] and "Delete an opportunity" == op["summary"]


@pytest.mark.parametrize("others", [1, 6])
def test_merge_recompute_queries_do_not_grow_with_the_data(others, django_assert_num_queries):
    """The lead_merged task's incremental recompute: a fixed number of
    queries however many other deals share its rollup days, and those days'
    rollup rows still equal a full rebuild (the refresh reads the credits of
    the days' deals, found by the deals' date indexes, not every credit)."""
    primary = _lead_with_touches(["email", "paid_search", "display"], T0, created_at=T0)
    duplicate = _lead_with_touches(["referral", "video"], T0 - timedelta(days=3), created_at=T0 - timedelta(days=2))
    touchpoints_rebuild(lead_ids=[primary.pk, duplicate.pk])
    deals = [_won_deal([primary]), _won_deal([duplicate], amount="500.00")]
    for k in range(others):  # the same creation and close days, untouched by the merge
        lead = _lead_with_touches(["organic_search", "email"][: 1 + k % 2], T0 + timedelta(days=1), created_at=T0)
        touchpoints_rebuild(lead_ids=[lead.pk])
        _won_deal([lead], amount=f"{100 + k}.00")
    attribution_compute()
    lead_merge(primary=primary, duplicate=duplicate)
    with django_assert_num_queries(QUERIES_MERGE_RECOMPUTE[connection.vendor == "postgresql"]):
        result = tasks.lead_merged(primary.pk)
    assert result["opportunities"] == 2
    assert result["credits"] == AttributionCredit.objects.filter(opportunity__in=deals).count() > 0
    _assert_rollup_equals_a_full_rebuild()


# The touchpoints' rebuild (6 with its savepoint); the deals of the lead (1); the recompute: the weights and the
# stored data-driven values (4), the deals (1), their roles and touches (2: server-side cursors, not counted on
# PostgreSQL), the rates (1), in a savepoint (2) the results lock (PostgreSQL), the days the old credits leave (1),
# their delete (1), the new credits (one COPY, not counted, on PostgreSQL; two INSERT batches on SQLite), and per
# basis the rollup days' delete and INSERT ... SELECT (4). None of it depends on how many other deals there are.
QUERIES_MERGE_RECOMPUTE = {False: 25, True: 24}  # SQLite, PostgreSQL


def test_rollup_days_refresh_reads_credits_by_deal_not_by_scan(run_tasks):
    """An incremental run's rollup refresh finds the credits of its days
    through the deals of those days (their date indexes, then the credits'
    opportunity index): a scan of the credits table costs seconds at
    millions of rows. Checked on the plan with sequential scans priced out,
    so the small test table would not be scanned for being small."""
    from attribution.computation import rollup_refresh as refresh

    lead = _lead_with_touches(["email", "paid_search"], T0, created_at=T0)
    touchpoints_rebuild(lead_ids=[lead.pk])
    deal = _won_deal([lead])
    attribution_compute()
    statements: list[tuple[str, list]] = []

    def keep(execute, sql, params, many, context):
        if sql.startswith(f"INSERT INTO {AttributionRollup._meta.db_table}"):
            statements.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(keep):
        refresh(models=list(ALL_MODELS), days={AttributionRollup.WON: {deal.closed_at.date()},
                                                AttributionRollup.CREATED: {deal.created_at.date()}})
    assert len(statements) == 2
    table = AttributionCredit._meta.db_table
    with connection.cursor() as cursor:
        for sql, params in statements:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL enable_seqscan = off")
                cursor.execute("EXPLAIN " + sql, params)
                plan = "\n".join(r[0] for r in cursor.fetchall())
                assert f"Seq Scan on {table}" not in plan, plan
                assert f"Index Scan using {table}_opportunity_id" in plan, plan
            else:
                cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
                plan = "\n".join(str(r[-1]) for r in cursor.fetchall())
                assert f"SCAN {table}" not in plan, plan
                assert f"SEARCH {table} USING INDEX" in plan, plan
    _assert_rollup_equals_a_full_rebuild()
