"""The one place nurture touches the condition language (issue 4,
``martech.conditions``). Everything else in nurture calls these three
functions, so nurture never grows a second language."""
from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db.models import Q

try:  # lands with the scoring issue
    from martech import conditions as _lang
except ImportError:  # pragma: no cover - only before the merge
    _lang = None


def _require():
    if _lang is None:
        raise ValidationError("The condition language (martech.conditions) is not installed yet.")
    return _lang


def condition_check(text: str) -> None:
    """Raise ValidationError ("column N: reason") when ``text`` does not parse."""
    if text and text.strip():
        _require().parse(text)


def condition_matches(text: str, lead, *, now: datetime | None = None) -> bool:
    """Empty conditions match everyone."""
    if not text or not text.strip():
        return True
    return bool(_require().parse(text).evaluate(lead, now=now))


def condition_q(text: str, *, now: datetime | None = None) -> Q:
    if not text or not text.strip():
        return Q()
    return _require().parse(text).to_q(now=now)
