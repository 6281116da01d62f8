"""An erased person and the CRMs, over HTTP against the emulators: a later
pull or webhook of the same person creates nothing, and the erasure asks
each CRM to delete them through the outbox."""
from __future__ import annotations

import pytest
from django.utils import timezone

from martech.crm.models import OutboxItem, PullFailure, PushState
from martech.crm.services import outbox_drain, pull_changes
from martech.models import Lead
from martech.privacy.models import CrmDeletion
from martech.privacy.services import subject_erase
from tests.privacy.scan import rows_holding

pytestmark = pytest.mark.django_db

EMAIL, FIRST, LAST = "erin.erased@example.org", "Erinzz", "Erasedzz"


def test_a_hubspot_pull_of_the_erased_person_creates_nothing(connection, hubspot):
    hubspot.put_contact({"email": EMAIL, "firstname": FIRST, "lastname": LAST})
    assert pull_changes(connection=connection).pulled == 1
    lead = Lead.objects.get(email=EMAIL)
    assert PushState.objects.filter(connection=connection, object="contact", local_id=lead.pk).exists()

    subject_erase(email=EMAIL, source="test", crm_delete=False)
    # A salesperson edits the contact in HubSpot; the next pulls (incremental, then full) bring it again.
    hubspot.put_contact({"email": EMAIL, "jobtitle": "CEO"})
    run = pull_changes(connection=connection)
    assert (run.pulled, run.failed, run.skipped) == (0, 0, 1)
    run = pull_changes(connection=connection, full=True)
    assert (run.pulled, run.failed) == (0, 0)
    assert not Lead.objects.exists()
    assert not PullFailure.objects.exists()  # skipped, not a failure retried for ever
    assert rows_holding([EMAIL, FIRST, LAST]) == {}


def test_the_erasure_deletes_the_contact_in_hubspot_through_the_outbox(connection, hubspot):
    hubspot.put_contact({"email": EMAIL, "firstname": FIRST})
    pull_changes(connection=connection)
    remote_id = hubspot.by_email[EMAIL]
    hubspot.put_contact({"email": "other@example.org"})

    receipt = subject_erase(email=EMAIL, source="test")
    assert receipt.crm_deletes == {"hubspot": 1}
    deletion = CrmDeletion.objects.get(request=receipt)
    assert OutboxItem.objects.filter(connection=connection, object="erasure", local_id=deletion.pk,
                                     status="pending").exists()
    run = outbox_drain(connection=connection)
    assert (run.pushed, run.failed) == (1, 0), run.error
    assert ("POST", "/crm/v3/objects/contacts/gdpr-delete", {"objectId": remote_id}) in hubspot.requests
    assert remote_id not in hubspot.contacts and EMAIL not in hubspot.by_email
    assert "other@example.org" in hubspot.by_email
    deletion.refresh_from_db()
    assert (deletion.status, deletion.remote_id) == (CrmDeletion.Status.DONE, "")
    assert OutboxItem.objects.get(object="erasure").status == "done"
    # A redelivered row finds the deletion done and calls nothing.
    OutboxItem.objects.filter(object="erasure").update(status="pending", claimed_at=None, next_attempt_at=timezone.now())
    calls = len(hubspot.requests)
    assert outbox_drain(connection=connection).skipped == 1
    assert len(hubspot.requests) == calls


def test_a_contact_already_gone_in_hubspot_settles_as_gone(connection, hubspot):
    hubspot.put_contact({"email": EMAIL, "firstname": FIRST})
    pull_changes(connection=connection)
    del hubspot.contacts[hubspot.by_email.pop(EMAIL)]
    receipt = subject_erase(email=EMAIL, source="test")
    assert outbox_drain(connection=connection).failed == 0
    assert CrmDeletion.objects.get(request=receipt).status == CrmDeletion.Status.GONE


def test_the_erasure_deletes_the_salesforce_lead(sf_connection, salesforce):
    record = salesforce.put("Lead", {"Email": EMAIL, "FirstName": FIRST, "LastName": LAST, "Company": "Acme"})
    pull_changes(connection=sf_connection)
    assert Lead.objects.get(email=EMAIL).salesforce_lead_id == record["Id"]

    receipt = subject_erase(email=EMAIL, source="test")
    assert receipt.crm_deletes == {"salesforce": 1}
    run = outbox_drain(connection=sf_connection)
    assert (run.pushed, run.failed) == (1, 0), run.error
    assert record["Id"] not in salesforce.records["Lead"]
    # Salesforce's recycle bin and the next pull: nothing comes back.
    salesforce.put("Lead", {"Email": EMAIL, "FirstName": FIRST, "LastName": LAST, "Company": "Acme"})
    run = pull_changes(connection=sf_connection, full=True)
    assert (run.pulled, run.failed) == (0, 0)
    assert not Lead.objects.exists()



def test_a_page_written_in_bulk_skips_the_erased_person_and_writes_the_others(connection):
    # A pulled page of several leads is written by the contact type's
    # write_many (lead_upsert_many): the erased person among them is skipped
    # (None, as the single write answers), the others are written.
    from martech.crm import objects

    Lead.objects.create(email=EMAIL, first_name=FIRST, last_name=LAST)
    subject_erase(email=EMAIL, source="test", crm_delete=False)
    items = [(None, {"email": f"kept{n}@example.org", "first_name": f"Kept{n}"}) for n in range(2)]
    items.insert(1, (None, {"email": EMAIL, "first_name": FIRST, "job_title": "CEO"}))
    written = objects.get("contact").write_many(items=items, source="crm:hubspot")
    assert [getattr(w, "email", w) for w in written] == ["kept0@example.org", None, "kept1@example.org"]
    assert sorted(Lead.objects.values_list("email", flat=True)) == ["kept0@example.org", "kept1@example.org"]
    assert rows_holding([EMAIL, FIRST, LAST]) == {}
