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
