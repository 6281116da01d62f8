"""The one place routing touches the shared condition language
(``martech.conditions``). Routing never parses conditions itself; an empty
condition means "every lead" (with the rule's territory, if any).
"""
from __future__ import annotations

from functools import lru_cache

from django.db.models import Q

from martech import conditions as _language


@lru_cache(maxsize=4096)
def _parsed(text: str):
    # A parse depends only on the text (published rules never change), so it
    # is kept; a bad text raises ConditionError and is not cached.
    return _language.parse(text)


def condition_validate(text: str) -> None:
    """Raise ValidationError ("column N: reason") for a bad condition."""
    text = (text or "").strip()
    if text:
        _parsed(text)


def condition_compile(text: str):
    """The parsed condition, to evaluate many times (None for an empty
    condition, which matches every lead)."""
    text = (text or "").strip()
    return _parsed(text) if text else None


def condition_matches(text: str, lead, *, now=None) -> bool:
    text = (text or "").strip()
    if not text:
        return True
    return _parsed(text).evaluate(lead, now=now)


def condition_q(text: str, *, now=None) -> Q:
    text = (text or "").strip()
    if not text:
        return Q()
    return _parsed(text).to_q(now=now)
