"""After an erasure, every way in refuses the person (staff-facing paths,
naming the field) or suppresses them (public paths, answered as for anyone)."""
from __future__ import annotations

import io
import json
import uuid

import pytest
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.utils import timezone
from rest_framework.test import APIClient

from martech.models import Event, Identity, Lead, QuarantinedEvent
from martech.privacy.services import subject_erase
from martech.services.imports import lead_import_csv
from martech.services.ingest import ACCEPTED, REJECTED, events_ingest
from martech.services.leads import ERASED_MESSAGE, SubjectErased, lead_upsert
from tests.factories import FormFactory, WebsiteFactory, form_field
from tests.martech.api_support import *  # noqa: F403 (fixtures)
from tests.martech.api_support import error_fields
from tests.privacy.people import make_person

pytestmark = pytest.mark.django_db


@pytest.fixture
def erased():
    person = make_person(tag="in")
    subject_erase(email=person.email, source="test", crm_delete=False)
    return person


@pytest.fixture(autouse=True)
def _local_cache(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": f"privacy-{uuid.uuid4()}"}}
    cache.clear()


def test_lead_upsert_refuses_the_email_and_the_crm_ids(erased):
    with pytest.raises(SubjectErased) as exc:
        lead_upsert(data={"email": f" {erased.email.upper()} ", "first_name": "Again"}, source="api:x")
    assert exc.value.message_dict == {"email": [ERASED_MESSAGE]}
    with pytest.raises(ValidationError) as exc:
        lead_upsert(data={"hubspot_id": erased.hubspot_id}, source="crm:hubspot")
    assert set(exc.value.message_dict) == {"hubspot_id"}
    # Someone else is welcome.
    lead, created = lead_upsert(data={"email": "someone.else@example.org"}, source="api:x")
    assert created and not Lead.objects.filter(email=erased.email).exists()


def test_api_upsert_answers_400_naming_the_email(erased, token_api):
    api = token_api("leads:write", "leads:read")
    r = api.post("/api/v1/leads/upsert", {"email": erased.email, "first_name": "Again"}, format="json")
    assert r.status_code == 400
    assert error_fields(r) == {"email"}
    assert r.json()["error"]["fields"]["email"] == [ERASED_MESSAGE]


def test_csv_import_reports_the_rows_and_imports_the_rest(erased):
    csv_file = io.StringIO(f"email,first_name\n{erased.email},Again\nfresh@example.org,Fresh\n")
    report = lead_import_csv(file=csv_file)
    assert report.created == 1
    assert [(e.row, e.field, e.message) for e in report.errors] == [(2, "email", ERASED_MESSAGE)]
    assert not Lead.objects.filter(email=erased.email).exists()


def test_a_form_post_is_answered_as_for_anyone_and_keeps_nothing(erased):
    FormFactory(key="contact", fields=[form_field("email", "email", required=True),
                                       form_field("first_name", "first_name")])
    client = APIClient(enforce_csrf_checks=True)
    events_before = Event.objects.count()
    erased_answer = client.post("/api/v1/capture/contact", {"email": erased.email, "first_name": erased.first},
                                format="json", HTTP_USER_AGENT="Mozilla/5.0 test")
    other_answer = client.post("/api/v1/capture/contact", {"email": "new.person@example.org"},
                               format="json", HTTP_USER_AGENT="Mozilla/5.0 test")
    assert (erased_answer.status_code, erased_answer.json()) == (other_answer.status_code, other_answer.json())
    assert erased_answer.status_code == 202
    assert not Lead.objects.filter(email=erased.email).exists()
    assert Event.objects.count() == events_before + 1  # the other person's submission only


def _identify(email=None, anon=None, **extra):
    item = {"type": "identify", "messageId": str(uuid.uuid4()), "timestamp": timezone.now().isoformat(), **extra}
    if email:
        item["traits"] = {"email": email}
    if anon:
        item["anonymousId"] = anon
    return item


def test_the_tracker_suppresses_the_email_and_the_anonymous_id(erased):
    website = WebsiteFactory(name="Site")
    items = [
        _identify(email=erased.email, anon="fresh-anon"),
        {"type": "page", "messageId": str(uuid.uuid4()), "anonymousId": erased.anonymous_id,
         "timestamp": timezone.now().isoformat(), "properties": {"url": "https://www.acme.example/"}},
        {"type": "page", "messageId": str(uuid.uuid4()), "anonymousId": "someone-else",
         "timestamp": timezone.now().isoformat(), "properties": {"url": "https://www.acme.example/"}},
    ]
    client = APIClient()
    r = client.post("/api/v1/t", json.dumps({"key": website.key, "sentAt": timezone.now().isoformat(),
                                             "batch": items}),
                    content_type="text/plain;charset=UTF-8", HTTP_ORIGIN=website.allowed_origins[0])
    assert r.status_code == 200, r.content
    statuses = [row["status"] for row in r.json()["results"]]
    # Answered like anyone's: accepted, nothing naming a reason.
    assert statuses == [ACCEPTED, ACCEPTED, ACCEPTED]
    assert not Event.objects.filter(anonymous_id=erased.anonymous_id).exists()
    assert not Event.objects.filter(anonymous_id="fresh-anon").exists()
    assert not Identity.objects.filter(value="fresh-anon").exists()
    assert Event.objects.filter(anonymous_id="someone-else").count() == 1
    assert not Lead.objects.filter(email=erased.email).exists()


def test_the_events_api_rejects_naming_the_field_and_quarantines_nothing(erased, settings):
    result = events_ingest(items=[_identify(email=erased.email), _identify(anon=erased.anonymous_id),
                                  {**_identify(anon=erased.anonymous_id), "type": "track", "event": "no_such_type"}],
                           source="api:x", policy="quarantine")
    rows = [(r.status, r.field, r.reason) for r in result.results]
    assert rows == [(REJECTED, "traits.email", ERASED_MESSAGE), (REJECTED, "anonymousId", ERASED_MESSAGE),
                    (REJECTED, "anonymousId", ERASED_MESSAGE)]
    assert not QuarantinedEvent.objects.exists()
