"""A pulled page is applied with a fixed number of queries, whatever its
size: new leads, changed leads, unchanged leads, refused records, conflicts
and pending pushes (``services.pulled_apply_page``)."""
from __future__ import annotations

import pytest
from django.db import connection as db
from django.test.utils import CaptureQueriesContext

from martech.crm.connectors.base import Pulled
from martech.crm.models import OutboxItem, PullFailure, PushState
from martech.crm.services import pull_changes, pulled_apply_page
from martech.models import Lead, StageTransition
from martech.scoring.services import lead_fields_read
from martech.services.leads import lead_upsert

pytestmark = pytest.mark.django_db

AT = "2026-01-05T09:00:00.000Z"


def _page(start: int, n: int, **extra: str) -> list[Pulled]:
    return [Pulled(remote_id=str(1000 + i), modified_at=AT,
                   properties={"email": f"p{i}@example.org", "firstname": f"P{i}", "lastname": "Page",
                               "jobtitle": "Buyer", "lifecyclestage": "marketingqualifiedlead", **extra})
            for i in range(start, start + n)]


def _queries(connection, page: list[Pulled]) -> tuple[int, list]:
    with CaptureQueriesContext(db) as ctx:
        outcomes = pulled_apply_page(connection=connection, page=page, obj="contact")
    return len(ctx.captured_queries), outcomes


@pytest.mark.parametrize("kind", ["new", "changed", "unchanged"])
def test_queries_per_page_do_not_grow_with_its_size(connection, kind):
    small, large = _page(0, 5), _page(100, 30)
    # A first page fills the per-process caches (configuration, free-mail
    # domains), and so do the rules scoring's lead hook asks which fields they read.
    pulled_apply_page(connection=connection, page=_page(900, 2), obj="contact")
    lead_fields_read()
    if kind != "new":
        # Pulled once already: the second application finds them by their push states.
        assert pulled_apply_page(connection=connection, page=small, obj="contact") == ["pulled"] * 5
        assert pulled_apply_page(connection=connection, page=large, obj="contact") == ["pulled"] * 30
    if kind == "changed":
        small, large = _page(0, 5, jobtitle="CEO"), _page(100, 30, jobtitle="CEO")
    small_n, small_out = _queries(connection, small)
    large_n, large_out = _queries(connection, large)
    assert small_out == ["pulled"] * 5 and large_out == ["pulled"] * 30
    # SQLite takes at most 999 parameters a statement: Django splits the new
    # leads' INSERT by that, not per record (PostgreSQL: one INSERT).
    rows = db.ops.bulk_batch_size(Lead._meta.concrete_fields, large)
    split = -(-30 // rows) - -(-5 // rows) if kind == "new" else 0
    assert large_n == small_n + split, (small_n, large_n, rows)
    assert large_n <= 25
    assert Lead.objects.filter(email__startswith="p").count() == 37
    if kind == "changed":
        assert set(Lead.objects.filter(hubspot_id__lt="1900").values_list("job_title", flat=True)) == {"CEO"}
    # Every lead's push state holds what the pull agreed on: a push of it is skipped.
    assert PushState.objects.filter(connection=connection, object="contact").exclude(payload_hash="").count() == 37
    # Not echoed back to the CRM it came from.
    assert not OutboxItem.objects.exists()


def test_a_page_writes_what_single_upserts_write(connection):
    outcomes = pulled_apply_page(connection=connection, page=_page(0, 3), obj="contact")
    assert outcomes == ["pulled"] * 3
    lead = Lead.objects.get(email="p1@example.org")
    assert (lead.first_name, lead.hubspot_id, lead.lifecycle_stage.key) == ("P1", "1001", "mql")
    # New leads get their stage with its history, as lead_upsert gives it.
    assert list(StageTransition.objects.filter(lead=lead).values_list("reason", "to_stage__key", "source")) == [
        ("created", "mql", "crm:hubspot")]


def test_a_refused_record_fails_alone_and_the_rest_of_the_page_is_written(connection):
    page = _page(0, 4)
    page[2].properties["email"] = "not an email"
    outcomes = pulled_apply_page(connection=connection, page=page, obj="contact")
    assert [o for o in outcomes if isinstance(o, str)] == ["pulled"] * 3
    assert "email" in outcomes[2].message_dict
    assert set(Lead.objects.values_list("email", flat=True)) == {"p0@example.org", "p1@example.org", "p3@example.org"}


def test_a_key_taken_by_another_lead_is_refused_for_that_record_only(connection):
    # p1's email is one lead's and its CRM id another's: the bulk write meets
    # the unique index, and the page is written record by record.
    lead_upsert(data={"email": "p1@example.org"}, source="test")
    lead_upsert(data={"email": "other@example.org", "hubspot_id": "1001"}, source="test")
    outcomes = pulled_apply_page(connection=connection, page=_page(0, 3), obj="contact")
    assert outcomes[0] == outcomes[2] == "pulled"
    assert outcomes[1].message_dict == {"hubspot_id": ["Another lead already has this value; merge the two leads "
                                                      "instead."]}
    assert Lead.objects.filter(email__in=["p0@example.org", "p2@example.org"]).count() == 2
    assert Lead.objects.get(email="p1@example.org").hubspot_id is None


def test_a_pending_push_keeps_local_edits_and_is_versioned(connection):
    pulled_apply_page(connection=connection, page=_page(0, 2), obj="contact")
    lead = Lead.objects.get(email="p0@example.org")
    lead_upsert(data={"email": "p0@example.org", "first_name": "Local"}, source="admin")
    item = OutboxItem.objects.get(local_id=lead.pk)
    outcomes = pulled_apply_page(connection=connection, page=_page(0, 2, firstname="Remote", jobtitle="CTO"),
                                 obj="contact")
    assert outcomes == ["pulled", "pulled"]
    lead.refresh_from_db()
    # System of record: job title is the CRM's, the first name (changed here, unsent) stays ours.
    assert (lead.first_name, lead.job_title) == ("Local", "CTO")
    item.refresh_from_db()
    assert item.status == OutboxItem.Status.PENDING and item.version == 2
    # Only the remote id was stored: the pending push still sends the local edit.
    state = PushState.objects.get(connection=connection, object="contact", local_id=lead.pk)
    assert state.pushed_properties["firstname"] == "P0"


def test_a_pull_of_three_pages_commits_each(connection, hubspot):
    for i in range(250):
        hubspot.put_contact({"email": f"h{i}@example.org", "firstname": f"H{i}"})
    run = pull_changes(connection=connection)
    assert (run.pulled, run.failed, run.error) == (250, 0, "")
    assert Lead.objects.filter(hubspot_id__isnull=False).count() == 250
    assert not PullFailure.objects.exists()
