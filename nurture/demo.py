"""Nurture demo data: the six gallery journeys (five published, the win-back
left as a draft to adapt), the demo's own form-triggered journey (the
"Request a demo" form's confirmation, published, so a demo request shows
the first email seconds after the form), a few enrollments on the ebook drip
and the cart recovery, and one run of the engine so the metrics have numbers.
Idempotent: journeys are found by name, and each is created and published
in one transaction (a failed publish leaves no unpublished copy that a
second run would take for done); enrollments are only made once."""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from martech.models import ConsentRecord, Form, Lead
from nurture.engine import enrollments_advance_due
from nurture.gallery import GALLERY, workflow_create_from_spec
from nurture.models import Enrollment, Workflow
from nurture.services import workflow_enroll_bulk, workflow_publish


# The demo's "Request a demo" form (martech.services.demo.FORMS) starts this
# one: a transactional confirmation (no marketing consent needed: the visitor
# asked for it), then, for those who consented, a marketing email before the
# call.
DEMO_REQUEST_JOURNEY = {
    "name": "Demo request follow-up", "trigger": "form", "trigger_config": {"form": "demo-request"},
    "goal_condition": 'lifecycle_stage in ("opportunity", "customer")',
    "definition": {"start": "e1", "steps": {
        "e1": {"type": "send_email", "subject": "Your demo request, {{first_name|there}}",
               "body": "Thanks for asking for a demo. Your account executive will write within four business hours "
                       "to find a time. Meanwhile, the product tour: https://example.com/tour",
               "marketing": False, "next": "w1"},
        "w1": {"type": "wait", "business_days": 1, "next": "e2"},
        "e2": {"type": "send_email", "subject": "Before your demo: three customer stories",
               "body": "How teams like yours route and score leads: https://example.com/customers", "next": "end"},
        "end": {"type": "end"}}},
}
DEMO_JOURNEYS = {**GALLERY, "demo_request": DEMO_REQUEST_JOURNEY}


def demo_seed(*, progress: bool = False) -> dict[str, int]:
    made_wf = made_enr = 0
    flows = {}
    for key, spec in DEMO_JOURNEYS.items():
        wf = Workflow.objects.filter(name=spec["name"]).first()
        form_key = spec["trigger_config"].get("form") if spec["trigger"] == "form" else None
        if wf is None and form_key and not Form.objects.filter(key=form_key).exists():
            continue  # its form is not there: publishing would refuse a journey nobody can start
        if wf is None:
            with transaction.atomic():
                wf = workflow_create_from_spec(spec=spec)
                if key != "winback_180":
                    workflow_publish(workflow=wf)
            made_wf += 1
        flows[key] = wf
    consenting = Lead.objects.filter(
        consent_records__channel="email", consent_records__status=ConsentRecord.Status.GRANTED
    ).order_by("pk").values_list("pk", flat=True).distinct()
    ids = list(consenting[:60])
    for key, chosen in (("ebook_drip", ids[:40]), ("cart_abandonment", ids[40:60])):
        wf = flows[key]
        if wf.status == Workflow.Status.ACTIVE and not Enrollment.objects.filter(workflow=wf).exists() and chosen:
            made_enr += workflow_enroll_bulk(workflow=wf, lead_ids=chosen, source="demo")
    steps = enrollments_advance_due(now=timezone.now()) if made_enr else 0
    return {"nurture workflows": made_wf, "nurture enrollments": made_enr, "nurture steps run": steps}
