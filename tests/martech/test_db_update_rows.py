"""martech.db.update_rows: per-row values of several columns written as
bulk_update writes them, in one statement on PostgreSQL (and per batch)."""
from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from martech.db import update_rows
from martech.models import Account, Lead, LifecycleStage

pytestmark = pytest.mark.django_db


def test_each_row_gets_its_own_values_of_every_column():
    stage = LifecycleStage.objects.get(key="mql")
    account = Account.objects.create(name="Acme", domain="acme.example.com")
    leads = [Lead.objects.create(email=f"u{i}@example.org", first_name="Old", properties={"k": 1}) for i in range(4)]
    untouched = Lead.objects.create(email="other@example.org", first_name="Keep")
    leads[0].first_name, leads[0].hubspot_id = "Ann", "101"
    leads[1].first_name, leads[1].hubspot_id = "Bo's \"quoted\"", None  # quotes, and a NULL
    leads[2].lifecycle_stage, leads[2].account = stage, account  # foreign keys
    leads[3].properties = {"plan": "pro", "seats": 3}  # JSON
    fields = ["first_name", "hubspot_id", "lifecycle_stage", "account", "properties"]
    with CaptureQueriesContext(connection) as ctx:
        update_rows(Lead, leads, fields)
    if connection.vendor == "postgresql":
        assert len(ctx.captured_queries) == 1
    got = {lead.email: lead for lead in Lead.objects.all()}
    assert (got["u0@example.org"].first_name, got["u0@example.org"].hubspot_id) == ("Ann", "101")
    assert (got["u1@example.org"].first_name, got["u1@example.org"].hubspot_id) == ("Bo's \"quoted\"", None)
    assert (got["u2@example.org"].lifecycle_stage_id, got["u2@example.org"].account_id) == (stage.pk, account.pk)
    assert got["u3@example.org"].properties == {"plan": "pro", "seats": 3}
    assert got["u0@example.org"].properties == {"k": 1}  # a column not named is left alone
    assert got["other@example.org"].first_name == "Keep"
    assert untouched.pk not in {lead.pk for lead in leads}


def test_batches_of_batch_size_and_nothing_for_no_rows():
    leads = [Lead.objects.create(email=f"b{i}@example.org") for i in range(5)]
    for lead in leads:
        lead.first_name = f"N{lead.pk}"
    with CaptureQueriesContext(connection) as ctx:
        update_rows(Lead, leads, ["first_name"], batch_size=2)
        update_rows(Lead, [], ["first_name"])
    if connection.vendor == "postgresql":
        assert len(ctx.captured_queries) == 3
    assert {lead.pk: lead.first_name for lead in Lead.objects.all()} == {lead.pk: f"N{lead.pk}" for lead in leads}


@pytest.mark.postgres_only  # SQLite does not enforce a varchar's length
def test_a_value_too_long_for_its_column_is_refused_not_cut():
    from django.db import DataError, transaction

    lead = Lead.objects.create(email="long@example.org")
    lead.first_name = "x" * 1000
    with pytest.raises(DataError), transaction.atomic():
        update_rows(Lead, [lead], ["first_name"])
    assert Lead.objects.get(pk=lead.pk).first_name == ""
