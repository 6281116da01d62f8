"""The Privacy area: who sees it, the lead actions, the subject page and its confirmation."""
from __future__ import annotations

import io
import zipfile

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

from martech.models import Lead
from martech.privacy.models import PrivacyRequest
from tests.factories import UserFactory
from tests.privacy.people import make_person

pytestmark = pytest.mark.django_db

LEADS = "/admin/martech/lead/"
REQUESTS = "/admin/privacy/privacyrequest/"
SUBJECT = "/admin/privacy/privacyrequest/subject/"


@pytest.fixture
def dpo():
    return UserFactory(username="dpo", groups=["Privacy"])


def test_the_privacy_area_shows_to_superusers_and_the_privacy_role_only(client, dpo, superuser, marketing_ops):
    for user, visible in ((dpo, True), (superuser, True), (marketing_ops, False)):
        client.force_login(user)
        index = client.get("/admin/").content.decode()
        assert ("Privacy requests" in index) is visible, user
        assert client.get(REQUESTS).status_code == (200 if visible else 403)


def test_lead_actions_are_offered_to_the_privacy_role_not_to_marketing_ops(client, dpo, marketing_ops):
    make_person(tag="la")
    client.force_login(dpo)
    page = client.get(LEADS).content.decode()
    assert "erase_personal_data" in page and "export_personal_data" in page
    client.force_login(marketing_ops)
    page = client.get(LEADS).content.decode()
    assert "erase_personal_data" not in page and "export_personal_data" not in page


def test_erase_action_confirms_then_erases_and_lists_the_receipt(client, dpo):
    person = make_person(tag="ea")
    client.force_login(dpo)
    post = {"action": "erase_personal_data", ACTION_CHECKBOX_NAME: [person.lead.pk]}
    confirm = client.post(LEADS, post)
    assert confirm.status_code == 200
    assert "Yes, erase" in confirm.content.decode()
    assert Lead.objects.filter(pk=person.lead.pk).exists()  # nothing happened yet
    done = client.post(LEADS, {**post, "apply": "yes"})
    assert done.status_code == 302
    assert not Lead.objects.filter(pk=person.lead.pk).exists()
    receipt = PrivacyRequest.objects.get(kind="erasure")
    assert receipt.requested_by == dpo and receipt.crm_deletes == {}  # the CRM box was not ticked
    listing = client.get(REQUESTS).content.decode()
    assert f"Erasure #{receipt.pk}" in listing
    detail = client.get(f"{REQUESTS}{receipt.pk}/change/").content.decode()
    assert "Events (Marketing)" in detail and person.email not in detail


def test_export_action_downloads_the_zip(client, dpo):
    person = make_person(tag="xa")
    client.force_login(dpo)
    r = client.post(LEADS, {"action": "export_personal_data", ACTION_CHECKBOX_NAME: [person.lead.pk]})
    assert r.status_code == 200 and r["Content-Type"] == "application/zip"
    assert "martech.Lead.csv" in zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert PrivacyRequest.objects.get().kind == "export"


def test_subject_page_exports_and_erases_by_email_after_confirmation(client, dpo):
    person = make_person(tag="sp")
    client.force_login(dpo)
    assert client.get(SUBJECT).status_code == 200
    r = client.post(SUBJECT, {"email": person.email, "export": "1"})
    assert r["Content-Type"] == "application/zip"
    confirm = client.post(SUBJECT, {"email": person.email, "crm_delete": "on", "erase": "1"})
    page = confirm.content.decode()
    assert "Yes, erase" in page and "Messages (Nurture" in page
    assert Lead.objects.filter(pk=person.lead.pk).exists()
    done = client.post(SUBJECT, {"email": person.email, "erase": "1", "confirm": "1"})
    assert done.status_code == 302
    assert not Lead.objects.filter(pk=person.lead.pk).exists()
    bad = client.post(SUBJECT, {"email": person.email, "lead": "3", "export": "1"})
    assert "Give exactly one of email, lead id or CRM id." in bad.content.decode()


def test_the_subject_page_sends_others_back_saying_why(client, marketing_ops):
    client.force_login(marketing_ops)
    r = client.get(SUBJECT, follow=True)
    assert "takes the Privacy role" in r.content.decode()
