"""Nurture demo data: the six gallery journeys (five published, the win-back
left as a draft to adapt), a few enrollments on the ebook drip and the cart
recovery, and one run of the engine so the metrics have numbers.
Idempotent: journeys are found by name, and each is created and published
in one transaction (a failed publish leaves no unpublished copy that a
second run would take for done); enrollments are only made once."""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from martech.models import ConsentRecord, Lead
from nurture.engine import enrollments_advance_due
from nurture.gallery import GALLERY, workflow_create_from_gallery
from nurture.models import Enrollment, Workflow
from nurture.services import workflow_enroll_bulk, workflow_publish


def demo_seed(*, progress: bool = False) -> dict[str, int]:
    made_wf = made_enr = 0
    flows = {}
    for key, spec in GALLERY.items():
        wf = Workflow.objects.filter(name=spec["name"]).first()
        if wf is None:
            with transaction.atomic():
                wf = workflow_create_from_gallery(key=key)
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
