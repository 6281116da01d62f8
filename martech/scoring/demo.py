"""Demo data for scoring: an active model with fit and engagement rules,
segments, lifecycle rules, follow-up tasks; then scores for the demo leads.
Idempotent: rows are found by name, the follow-up tasks are made on the run
that finds none (which leads are SQLs moves as the system works the demo
leads, so "the first 20 SQLs" is not a stable key), and only leads never
scored (no score history) are scored, by the active model."""
from __future__ import annotations

from decimal import Decimal

from django.db import transaction

from martech.models import EventType, Lead, LifecycleStage, SalesTask
from martech.scoring import services
from martech.scoring.models import EngagementRule, FitRule, LifecycleRule, ScoringModel, Segment
from martech.services.tasks import task_create

FIT = [
    ("Senior title", 'job_title contains "vp" or job_title contains "director" or job_title contains "head"', 20),
    ("Mid-size or larger company", "account.employee_count >= 200", 15),
    ("Software industry", 'account.industry = "Software"', 10),
    ("Core markets", 'country in ("US", "CA", "GB", "DE")', 5),
    ("Free mail", 'email_domain in ("gmail.com", "yahoo.com", "hotmail.com")', -10),
]
SEGMENTS = [
    ("Hot North America", 'score >= 50 and country in ("US", "CA")'),
    ("Enterprise prospects", "account.employee_count >= 1000 and fit_score >= 20"),
    ("Quiet MQLs", 'lifecycle_stage = "mql" and latest_touch_at < now - 30 days'),
]


# The demo's MQL threshold, set against the demo's own scores (fit and
# decayed engagement of six months of demo events): about a fifth of the
# demo leads meet it, as in a healthy funnel. At "score >= 75 and fit_score
# >= 30" (a typical production threshold) only a handful did.
MQL_CONDITION = "score >= 32 and fit_score >= 15"

FOLLOW_UP_KEY = "demo:follow-up:"
# Leads scored per transaction (scores_recompute locks them).
SCORE_BATCH = 5000


def demo_seed(*, progress: bool = False) -> dict[str, int]:
    created: dict[str, int] = {"scoring models": 0, "segments": 0, "lifecycle rules": 0, "sales tasks": 0,
                               "leads scored": 0}
    with transaction.atomic():
        model, made = ScoringModel.objects.get_or_create(
            name="Default", defaults={"is_active": not ScoringModel.objects.filter(is_active=True).exists(),
                                      "half_life_days": Decimal("30")})
        created["scoring models"] += made
        if made:
            for name, condition, points in FIT:
                FitRule.objects.create(model=model, name=name, condition=condition, points=points)
            types = {t.name: t for t in EventType.objects.filter(name__in=["page_view", "form_submitted",
                                                                          "demo_requested"])}
            if "page_view" in types:
                EngagementRule.objects.create(model=model, name="Distinct pages", event_type=types["page_view"],
                                              points=2, cap_points=10, cap_period="day", distinct_property="url")
                EngagementRule.objects.create(model=model, name="Pricing page", event_type=types["page_view"],
                                              condition='properties.url contains "/pricing"', points=10,
                                              cap_points=10, cap_period="week")
            if "form_submitted" in types:
                EngagementRule.objects.create(model=model, name="Form submitted", event_type=types["form_submitted"],
                                              points=15, cap_points=30, cap_period="month")
            if "demo_requested" in types:
                EngagementRule.objects.create(model=model, name="Demo requested", event_type=types["demo_requested"],
                                              points=40)
        for name, condition in SEGMENTS:
            if not Segment.objects.filter(name=name).exists():
                services.segment_save(name=name, condition=condition)
                created["segments"] += 1
        stages = {s.key: s for s in LifecycleStage.objects.all()}
        demo_type = EventType.objects.filter(name="demo_requested").first()
        for name, order, condition, event_type, to in [
            ("Qualified by score", 10, MQL_CONDITION, None, "mql"),
            ("Demo requested", 5, "", demo_type, "sql"),
        ]:
            if (event_type is not None or condition) and not LifecycleRule.objects.filter(name=name).exists():
                LifecycleRule.objects.create(name=name, order=order, condition=condition, event_type=event_type,
                                             to_stage=stages[to])
                created["lifecycle rules"] += 1
        if not SalesTask.objects.filter(key__startswith=FOLLOW_UP_KEY).exists():
            for lead in Lead.objects.filter(lifecycle_stage__key__in=["sql", "opportunity"]).order_by("pk")[:20]:
                _, made = task_create(key=f"{FOLLOW_UP_KEY}{lead.pk}", lead=lead, owner=lead.owner,
                                      subject=f"Follow up with {lead}", source="demo")
                created["sales tasks"] += made
    if ScoringModel.objects.filter(is_active=True).exists():
        # Demo leads are bulk-inserted with made-up scores and no history;
        # a lead scored once (here, or by the system on its own events) is
        # left to the system.
        unscored = list(Lead.objects.filter(score_history__isnull=True).order_by("pk").values_list("pk", flat=True))
        for i in range(0, len(unscored), SCORE_BATCH):
            created["leads scored"] += services.scores_recompute(
                lead_ids=unscored[i:i + SCORE_BATCH], reason="demo", batch_signal=True)
    return created
