"""The one place routing touches the shared condition language
(``martech.conditions``, issue 4). Routing never parses conditions itself.

Until the language is installed, a rule may only have an empty condition
(territory and action still work); a non-empty one is refused naming the
field, never silently treated as "matches".
"""
from __future__ import annotations

from functools import lru_cache

from django.core.exceptions import ValidationError
from django.db.models import Q

try:  # issue 4 lands martech/conditions.py
    from martech import conditions as _language
except ImportError:  # pragma: no cover - only before the merge
    _language = None


def available() -> bool:
    return _language is not None


@lru_cache(maxsize=4096)
def _parsed(text: str):
    # Published rules are immutable, so the parse of a text can be kept.
    return _language.parse(text)


def condition_validate(text: str) -> None:
    """Raise ValidationError ("column N: reason") for a bad condition."""
    text = (text or "").strip()
    if not text:
        return
    if _language is None:
        raise ValidationError("The condition language is not installed yet; leave the condition empty.")
    _parsed(text)


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
