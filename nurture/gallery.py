"""The six journeys of the seeds, creatable as drafts to adapt (their emails
as email templates the steps name)."""
from __future__ import annotations

from django.db import transaction

from nurture.models import Workflow

E = "send_email"
GALLERY: dict[str, dict] = {
    "ebook_drip": {
        "name": "Ebook drip", "trigger": "event", "trigger_config": {"event": "ebook_downloaded"},
        "goal_event": "demo_requested",
        "definition": {"start": "e1", "steps": {
            "e1": {"type": E, "subject": "Your ebook, {{first_name|there}}", "body": "Here is your copy: https://example.com/ebook", "next": "w1"},
            "w1": {"type": "wait", "days": 5, "next": "e2"},
            "e2": {"type": E, "subject": "Three ideas from the ebook", "body": "Chapter two in practice: https://example.com/blog", "next": "w2"},
            "w2": {"type": "wait", "days": 9, "next": "e3"},
            "e3": {"type": E, "subject": "Ready to see it live?", "body": "Book a demo: https://example.com/demo", "next": "end"},
            "end": {"type": "end"}}},
    },
    "cart_abandonment": {
        "name": "Cart abandonment recovery", "trigger": "event", "trigger_config": {"event": "cart_abandoned"},
        "goal_event": "order_completed", "reenroll": "after_days", "reenroll_days": 7,
        "definition": {"start": "w0", "steps": {
            "w0": {"type": "wait", "hours": 1, "next": "value"},
            "value": {"type": "branch", "condition": "properties.cart_value >= 100", "yes": "repeat", "no": "e_low"},
            "repeat": {"type": "branch", "condition": "properties.orders_count >= 1", "yes": "e_vip", "no": "e_high"},
            "e_vip": {"type": E, "subject": "Your cart is waiting, {{first_name|friend}}", "body": "As a returning customer: free shipping. https://example.com/cart", "next": "sms"},
            "e_high": {"type": E, "subject": "You left something behind", "body": "10% off your cart today: https://example.com/cart", "next": "sms"},
            "e_low": {"type": E, "subject": "Still thinking it over?", "body": "Your cart: https://example.com/cart", "next": "aud"},
            "sms": {"type": "send_sms", "body": "Your cart is saved: https://example.com/cart", "next": "aud"},
            "aud": {"type": "audience_add", "audience": "cart-retargeting", "next": "w1"},
            "w1": {"type": "wait", "days": 3, "next": "aud_out"},
            "aud_out": {"type": "audience_remove", "audience": "cart-retargeting", "next": "end"},
            "end": {"type": "end"}}},
    },
    "mql_reengagement": {
        # Entering the "Quiet MQLs" segment (an MQL untouched for 30 days) is
        # the trigger; the segment is made on creation when it is missing.
        "name": "MQL re-engagement (30 idle days)", "trigger": "segment",
        "segment": ("Quiet MQLs", 'lifecycle_stage = "mql" and latest_touch_at < now - 30 days'),
        "reenroll": "after_days", "reenroll_days": 90,
        "goal_condition": "lifecycle_stage = \"sql\"",
        "definition": {"start": "e1", "steps": {
            "e1": {"type": E, "subject": "Still looking at {{company_name|your options}}?", "body": "What changed since we spoke: https://example.com/new", "next": "task"},
            "task": {"type": "create_task", "subject": "Re-engage {{email}} (30 days idle)", "next": "end"},
            "end": {"type": "end"}}},
    },
    "webinar_followup": {
        "name": "Webinar follow-up", "trigger": "event", "trigger_config": {"event": "webinar_attended"},
        "definition": {"start": "e1", "steps": {
            "e1": {"type": E, "subject": "Thanks for joining, {{first_name|there}}", "body": "The recording: https://example.com/recording", "next": "w"},
            "w": {"type": "wait", "business_days": 2, "next": "hot"},
            "hot": {"type": "branch", "condition": "score >= 60", "yes": "task", "no": "e2"},
            "task": {"type": "create_task", "subject": "Follow up webinar attendee {{email}}", "next": "end"},
            "e2": {"type": E, "subject": "Slides and Q&A", "body": "https://example.com/slides", "next": "end"},
            "end": {"type": "end"}}},
    },
    "trial_onboarding": {
        "name": "Trial onboarding", "trigger": "event", "trigger_config": {"event": "trial_started"},
        "goal_event": "subscription_started",
        "definition": {"start": "e1", "steps": {
            "e1": {"type": E, "subject": "Welcome to your trial", "body": "Start here: https://example.com/start", "marketing": False, "next": "w1"},
            "w1": {"type": "wait", "days": 2, "next": "act"},
            "act": {"type": "wait_until", "event": "feature_used", "timeout_hours": 72, "next": "e_tip", "timeout_next": "e_help"},
            "e_tip": {"type": E, "subject": "A power tip", "body": "Try automations: https://example.com/tips", "next": "w2"},
            "e_help": {"type": E, "subject": "Need a hand?", "body": "Book onboarding: https://example.com/help", "next": "w2"},
            "w2": {"type": "wait", "days": 7, "next": "e_end"},
            "e_end": {"type": E, "subject": "Your trial ends soon", "body": "Pick a plan: https://example.com/pricing", "next": "end"},
            "end": {"type": "end"}}},
    },
    "winback_180": {
        "name": "180-day win-back with re-permission", "trigger": "manual", "trigger_config": {},
        "reenroll": "after_days", "reenroll_days": 180,
        "definition": {"start": "e1", "steps": {
            "e1": {"type": E, "subject": "Do you still want to hear from us?", "body": "Click to stay subscribed: https://example.com/stay", "next": "wait"},
            "wait": {"type": "wait_until", "event": "email_clicked", "timeout_hours": 336, "next": "keep", "timeout_next": "drop"},
            "keep": {"type": "update_field", "field": "properties.repermission", "value": "confirmed", "next": "end"},
            "drop": {"type": "update_field", "field": "properties.repermission", "value": "lapsed", "next": "end"},
            "end": {"type": "end"}}},
    },
}


@transaction.atomic
def workflow_create_from_gallery(*, key: str, actor=None, name: str | None = None) -> Workflow:
    """A draft copy of a gallery journey (a fresh name when taken)."""
    return workflow_create_from_spec(spec=GALLERY[key], actor=actor, name=name)


@transaction.atomic
def workflow_create_from_spec(*, spec: dict, actor=None, name: str | None = None) -> Workflow:
    """A draft workflow from a journey written as the gallery writes them
    (the demo's own journeys too): its emails become templates, a segment
    trigger's segment is made when missing, a taken name gets a suffix."""
    import copy

    spec = copy.deepcopy(spec)
    base = name or spec.pop("name")
    spec.pop("name", None)
    segment = spec.pop("segment", None)
    if segment:
        from martech.scoring.models import Segment
        from martech.scoring.services import segment_save

        seg_name, condition = segment
        seg = Segment.objects.filter(name=seg_name).first() or segment_save(name=seg_name, condition=condition)
        spec["trigger_config"] = {"segment": seg.pk, "enroll_existing": True}
    _emails_to_templates(base, spec["definition"], actor=actor)
    final, n = base, 2
    while Workflow.objects.filter(name=final).exists():
        final, n = f"{base} ({n})", n + 1
    return Workflow.objects.create(name=final, owner=actor if getattr(actor, "is_authenticated", False) else None,
                                   status=Workflow.Status.DRAFT, **spec)


def _emails_to_templates(journey: str, definition: dict, *, actor=None) -> None:
    """Each email of a gallery journey becomes an email template that its
    step names, so ops edit and preview it in the template editor. Found by
    name: a second copy of the journey shares the first one's templates."""
    from django.utils.html import escape

    from nurture.channels import html_from_text
    from nurture.models import EmailTemplate
    from nurture.services import email_template_save

    for step in definition["steps"].values():
        if step.get("type") != "send_email" or "template" in step:
            continue
        subject, body = step.pop("subject"), step.pop("body")
        name = f"{journey}: {subject}"[:200]
        template = EmailTemplate.objects.filter(name=name).first() or email_template_save(
            template=EmailTemplate(name=name, subject=subject, html_body=f"<p>{html_from_text(escape(body))}</p>",
                                   text_body=body), actor=actor)
        step["template"] = template.pk
