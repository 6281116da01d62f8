"""The database work of a push batch and of a pulled page is a fixed number
of queries, whatever the number of records in it, for both connectors
(over HTTP through the real clients to the emulators): the records' reads,
the CRM ids written back, the push states, the configuration's tokens."""
from __future__ import annotations

import pytest
from django.db import connection as db
from django.test.utils import CaptureQueriesContext

from martech.crm.models import PushState
from martech.crm.services import outbox_drain, pull_changes
from martech.models import Account, Lead
from martech.scoring.services import lead_fields_read
from martech.services.leads import lead_upsert

pytestmark = pytest.mark.django_db

# The most queries one batch (pushed, ids written back) or one page (pulled)
# costs, with the run's own (the run row, the allowance, the cursor).
# (25 before the drain stopped claiming again after a short batch, writing
# an unchanged allowance and reading the payloads' configuration per run,
# and claimed in one statement)
PUSH_QUERIES = 15
PULL_QUERIES = 31  # (33 while a page and its position were two transactions)


def _queries(fn) -> tuple[int, object]:
    with CaptureQueriesContext(db) as ctx:
        out = fn()
    return len(ctx.captured_queries), out


def _leads(prefix: str, n: int) -> None:
    for i in range(n):
        lead_upsert(data={"email": f"{prefix}{i}@example.org", "first_name": f"F{i}", "last_name": "Q",
                          "job_title": "Buyer"}, source="test")


def _warm(crm) -> None:
    """A first push and pull fill the per-process caches (configuration,
    free-mail domains, the rules scoring's lead hook reads)."""
    _leads("warm", 2)
    outbox_drain(connection=crm.connection)
    crm.put_person({"email": "warm-crm@example.org", "first_name": "W"})
    pull_changes(connection=crm.connection)
    lead_fields_read()


def test_a_push_batch_costs_the_same_queries_for_5_and_40_records(crm, settings):
    _warm(crm)
    counts = {}
    for n in (5, 40):
        _leads(f"push{n}-", n)
        counts[n], run = _queries(lambda: outbox_drain(connection=crm.connection))
        assert (run.pushed, run.failed, run.error) == (n, 0, "")
        # The CRM ids were written back (one statement for the batch).
        assert Lead.objects.filter(email__startswith=f"push{n}-").exclude(
            **{f"{'hubspot_id' if crm.provider == 'hubspot' else 'salesforce_lead_id'}__isnull": True}).count() == n
    assert counts[5] == counts[40], counts
    assert counts[40] <= PUSH_QUERIES, counts
    # Unchanged: every record skipped by its hash, no call, fewer queries still.
    for lead in Lead.objects.filter(email__startswith="push40-"):
        lead_upsert(data={"email": lead.email, "first_name": lead.first_name}, source="test")
    from martech.crm.outbox import enqueue

    enqueue([(crm.connection.pk, "contact", pk) for pk in
             Lead.objects.filter(email__startswith="push40-").values_list("pk", flat=True)])
    unchanged, run = _queries(lambda: outbox_drain(connection=crm.connection))
    assert (run.skipped, run.api_calls) == (40, 0)
    assert unchanged <= counts[40]


@pytest.mark.parametrize("kind", ["new", "changed", "with_accounts"])
def test_a_pulled_page_costs_the_same_queries_for_5_and_40_records(crm, kind):
    _warm(crm)
    counts = {}
    for n in (5, 40):
        prefix = f"pull{n}-"
        if kind == "with_accounts":
            # Each person's company is here and known to the CRM: the page's
            # push states resolve every lead's company id in one look-up.
            for i in range(n):
                account = Account.objects.create(name=f"Co {n}-{i}", domain=f"co{n}-{i}.example.com")
                PushState.objects.create(connection=crm.connection, object="company", local_id=account.pk,
                                         remote_id=f"{9000 + 100 * n + i}" if crm.provider == "hubspot"
                                         else f"001{n:03d}{i:012d}")
        emails = [f"{prefix}{i}@co{n}-{i}.example.com" if kind == "with_accounts" else f"{prefix}{i}@example.org"
                  for i in range(n)]
        for email in emails:
            crm.put_person({"email": email, "first_name": "Remote"})
        if kind == "changed":
            pull_changes(connection=crm.connection)
            for email in emails:
                crm.put_person({"email": email, "first_name": "Changed"})
        counts[n], run = _queries(lambda: pull_changes(connection=crm.connection))
        assert (run.pulled, run.failed, run.error) == (n, 0, ""), run.error
        leads = Lead.objects.filter(email__in=emails)
        assert sorted(leads.values_list("first_name", flat=True)) == ["Changed" if kind == "changed" else "Remote"] * n
        if kind == "with_accounts":
            assert leads.filter(account__isnull=False).count() == n
    # SQLite takes at most 999 parameters a statement: Django splits the new
    # leads' INSERT by that, not per record (PostgreSQL: one INSERT).
    rows = db.ops.bulk_batch_size(Lead._meta.concrete_fields, [None] * 40)
    split = -(-40 // rows) - -(-5 // rows) if kind != "changed" else 0
    assert counts[40] == counts[5] + split, counts
    assert counts[5] <= PULL_QUERIES, counts
