"""The one place nurture touches the condition language (issue 4,
``martech.conditions``). Everything else in nurture calls these three
functions, so nurture never grows a second language."""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from django.db.models import Q

from martech import conditions as _lang


@lru_cache(maxsize=512)
def _parsed(text: str):
    # Parsing is pure; a batch evaluates the same few texts thousands of times.
    return _lang.parse(text)


def condition_check(text: str) -> None:
    """Raise ValidationError ("column N: reason") when ``text`` does not parse."""
    if text and text.strip():
        _lang.parse(text)


def condition_matches(text: str, lead, *, now: datetime | None = None) -> bool:
    """Empty conditions match everyone."""
    if not text or not text.strip():
        return True
    return bool(_parsed(text).evaluate(lead, now=now))


def condition_q(text: str, *, now: datetime | None = None) -> Q:
    if not text or not text.strip():
        return Q()
    return _parsed(text).to_q(now=now)


# --- segments (martech.scoring) ----------------------------------------------------
def segments_by_id(ids) -> dict:
    """The existing segments among ``ids`` (a deleted segment is simply absent)."""
    from martech.scoring.models import Segment

    wanted = {int(i) for i in ids or [] if str(i).isdigit()}
    return {s.pk: s for s in Segment.objects.filter(pk__in=wanted)} if wanted else {}


def segment_q(segment, *, now: datetime | None = None) -> Q:
    """The segment's compiled condition (the same one scoring's
    ``segment_members`` uses), for set-based membership."""
    from martech.scoring.selectors import segment_condition

    return segment_condition(segment).to_q(now=now)


def segment_matches(segment, lead, *, now: datetime | None = None) -> bool:
    from martech.scoring.selectors import segment_condition

    return bool(segment_condition(segment).evaluate(lead, now=now))
