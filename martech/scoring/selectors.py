"""Reads for segments and scores."""
from __future__ import annotations

from django.db.models import QuerySet

from martech.conditions import Condition, ConditionError, matching_leads
from martech.models import Lead
from martech.scoring.models import ScoreHistory, Segment


def segment_condition(segment: Segment) -> Condition:
    if segment.condition_json:
        try:
            cond = Condition.from_json(segment.condition_json)
            if cond.text == segment.condition:
                return cond
        except ConditionError:  # stale stored form (a field was removed): parse the text again
            pass
    from martech.conditions import parse

    return parse(segment.condition)


def segment_members(segment: Segment) -> QuerySet[Lead]:
    """The leads in the segment now."""
    return matching_leads(segment_condition(segment)).select_related("account", "lifecycle_stage")


def score_history(lead_id: int) -> QuerySet[ScoreHistory]:
    return ScoreHistory.objects.filter(lead_id=lead_id).order_by("-changed_at", "-id")


def score_explanation(lead_id: int) -> ScoreHistory | None:
    """The lead's latest score computation: its scores and the stored
    per-rule breakdown (which rules gave how many points, and when), as of
    ``changed_at``. None when the lead was never given a score."""
    return score_history(lead_id).first()
