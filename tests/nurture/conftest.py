"""Helpers for the nurture tests: published workflows and consenting leads."""
from __future__ import annotations

import pytest
from django.core import mail

from martech.services.leads import consent_record
from nurture.channels import LocmemSmsBackend
from nurture.models import Workflow
from nurture.services import workflow_publish
from tests.factories import LeadFactory


def email_flow(n: int = 1, **kw) -> dict:
    steps = {}
    for i in range(1, n + 1):
        steps[f"e{i}"] = {"type": "send_email", "subject": f"Hello {{{{first_name|there}}}} #{i}",
                          "body": f"Body {i} https://example.com/p{i}", "next": f"e{i + 1}" if i < n else "end"}
    steps["end"] = {"type": "end"}
    return {"start": "e1", "steps": steps}


@pytest.fixture
def make_workflow(db):
    counter = {"n": 0}

    def make(definition: dict, *, publish: bool = True, **fields) -> Workflow:
        counter["n"] += 1
        wf = Workflow.objects.create(name=fields.pop("name", f"wf {counter['n']}"), definition=definition, **fields)
        if publish:
            workflow_publish(workflow=wf)
            wf.refresh_from_db()
        return wf

    return make


@pytest.fixture
def consenting_lead(db):
    def make(*, channels=("email",), **fields):
        lead = LeadFactory(**fields)
        for ch in channels:
            consent_record(lead=lead, channel=ch, granted=True, source="test")
        return lead

    return make


@pytest.fixture(autouse=True)
def _nurture_settings(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.MARTECH_NURTURE = {**settings.MARTECH_NURTURE, "SMS_BACKEND": "nurture.channels.LocmemSmsBackend"}
    LocmemSmsBackend.outbox = []
    mail.outbox = []
