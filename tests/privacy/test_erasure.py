"""Erasure: one service call removes a person from every app, keeps
attribution totals, leaves a salted tombstone and a receipt without them."""
from __future__ import annotations

import hashlib
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db.models import Sum

from attribution.models import AttributionCredit
from martech.models import Event, Lead
from martech.privacy import tombstones
from martech.privacy.models import PrivacyRequest, Tombstone
from martech.privacy.services import subject_erase
from martech.services.leads import erased_keys
from tests.privacy.people import make_person
from tests.privacy.scan import rows_holding

pytestmark = pytest.mark.django_db


def test_after_erasure_no_table_holds_the_email_the_name_or_the_anonymous_ids(superuser):
    person = make_person(tag="zq", user=superuser)
    bystander = make_person(tag="by", user=superuser)
    held = rows_holding(person.needles)
    # The person is really spread over the apps before (the scan can find them).
    apps_holding = {column.split(".")[0] for column in held}
    assert {"martech", "scoring", "routing", "nurture", "crm", "admin"} <= apps_holding, held
    bystander_before = rows_holding(bystander.needles)

    receipt = subject_erase(email=person.email.upper(), actor=superuser, source="test", crm_delete=False)

    assert rows_holding(person.needles) == {}
    # Nobody else lost anything.
    assert rows_holding(bystander.needles) == bystander_before
    assert Lead.objects.filter(pk=bystander.lead.pk).exists()
    deleted = receipt.counts["deleted"]
    # Three page views, the form submission and the anonymous page view before the person was known.
    assert deleted["martech.Event"] == 5
    assert deleted["martech.Lead"] == 1 and deleted["nurture.Message"] == 1
    assert deleted["nurture.Suppression"] == 1 and deleted["crm.WebhookReceipt"] == 1
    assert receipt.counts["anonymized"] == {"attribution.AttributionCredit": 1, "admin.LogEntry": 1}
    assert (receipt.kind, receipt.requested_by, receipt.source) == ("erasure", superuser, "test")


def test_credits_go_to_the_erased_placeholder_and_totals_stay(superuser):
    person = make_person(tag="cr")
    before = AttributionCredit.objects.aggregate(total=Sum("credit"))["total"]
    subject_erase(lead_id=person.lead.pk, actor=superuser, source="test", crm_delete=False)
    credit = AttributionCredit.objects.get()
    assert credit.touchpoint_id is None
    assert (credit.channel, credit.credit) == ("paid_search", Decimal("1000.00"))
    assert AttributionCredit.objects.aggregate(total=Sum("credit"))["total"] == before


def test_tombstones_are_salted_hashes_that_later_input_is_checked_against(settings):
    person = make_person(tag="tb")
    receipt = subject_erase(crm_id=person.hubspot_id, source="test", crm_delete=False)
    digests = set(Tombstone.objects.filter(request=receipt).values_list("digest", flat=True))
    assert len(digests) == 4  # email, HubSpot id, anonymous id, user id
    # Not a plain hash of the address: the salt is needed to test one.
    assert hashlib.sha256(person.email.encode()).hexdigest() not in digests
    assert erased_keys([("email", person.email), ("email", "other@example.org"), ("hubspot_id", person.hubspot_id),
                        ("anonymous", person.anonymous_id)]) == {
        ("email", person.email), ("hubspot_id", person.hubspot_id), ("anonymous", person.anonymous_id)}
    # Another salt, another hash: the stored ones no longer match.
    settings.MARTECH_PRIVACY = {"SALT": "another salt"}
    assert erased_keys([("email", person.email)]) == set()
    assert tombstones.digest("email", person.email) not in digests


def test_the_request_records_a_salted_hash_not_the_subject():
    person = make_person(tag="rh")
    receipt = subject_erase(email=person.email, source="test", crm_delete=False)
    assert receipt.subject_kind == "email"
    assert receipt.subject_hash == tombstones.digest("email", person.email)
    assert person.email not in str(PrivacyRequest.objects.values().get(pk=receipt.pk))


def test_erasing_again_finds_nothing_and_keeps_one_tombstone_each():
    person = make_person(tag="tw")
    subject_erase(email=person.email, source="test", crm_delete=False)
    tombs = Tombstone.objects.count()
    again = subject_erase(email=person.email, source="test", crm_delete=False)
    assert again.counts == {"deleted": {}, "anonymized": {}}
    assert Tombstone.objects.count() == tombs


def test_an_email_no_lead_has_is_still_erased_where_it_occurs():
    from nurture.models import Suppression

    Suppression.objects.create(address="gone@example.org", reason="bounce")
    receipt = subject_erase(email="gone@example.org", source="test", crm_delete=False)
    assert receipt.counts["deleted"] == {"nurture.Suppression": 1}
    assert erased_keys([("email", "gone@example.org")])


def test_a_subject_must_be_named_once_and_exist():
    with pytest.raises(ValidationError) as exc:
        subject_erase(lead_id=987654, source="test")
    assert exc.value.message_dict == {"lead": ["No lead #987654."]}
    with pytest.raises(ValidationError) as exc:
        subject_erase(email="a@example.org", lead_id=1, source="test")
    assert "subject" in exc.value.message_dict
    with pytest.raises(ValidationError) as exc:
        subject_erase(crm_id="nope", source="test")
    assert "crm_id" in exc.value.message_dict
    assert not PrivacyRequest.objects.exists()


def test_erasure_queries_do_not_grow_with_the_rows():
    small = make_person(tag="s1", events=2, messages=1)
    big = make_person(tag="b1", events=300, messages=40)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as one:
        subject_erase(lead_id=small.lead.pk, source="test", crm_delete=False)
    with CaptureQueriesContext(connection) as other:
        subject_erase(lead_id=big.lead.pk, source="test", crm_delete=False)
    # Set-based deletes: more rows, not more statements (Django deletes in batches of a few hundred).
    assert len(other.captured_queries) <= len(one.captured_queries) + 6
    assert not Event.objects.filter(lead_id=big.lead.pk).exists()
