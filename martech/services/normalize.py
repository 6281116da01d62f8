"""Pure normalization helpers shared by capture, import, admin and CRM pull."""
from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email


def normalize_email(value: str | None) -> str | None:
    """Trim and lower-case; ``None`` or blank gives ``None``. Raises
    ValidationError for something that is not an email address."""
    if value is None:
        return None
    value = str(value).strip().lower()
    if not value:
        return None
    validate_email(value)
    return value


_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


def normalize_domain(value: str | None) -> str | None:
    """``https://www.Example.com/about`` -> ``example.com``; blank -> None."""
    if not value:
        return None
    value = _SCHEME.sub("", str(value).strip().lower())
    value = value.split("/", 1)[0].split("@")[-1].split(":", 1)[0].rstrip(".")
    if value.startswith("www."):
        value = value[4:]
    return value or None


def normalize_phone(value: str | None, *, region: str | None = None) -> str:
    """E.164 (``+14155550123``) or ValidationError; blank gives ``""``."""
    if value is None or not str(value).strip():
        return ""
    try:
        parsed = phonenumbers.parse(str(value), (region or settings.PHONENUMBER_DEFAULT_REGION or "US").upper())
    except phonenumbers.NumberParseException as exc:
        raise ValidationError(f"Not a phone number: {exc}", code="invalid_phone") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise ValidationError("Not a valid phone number.", code="invalid_phone")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_country(value: str | None) -> str:
    if value is None or not str(value).strip():
        return ""
    value = str(value).strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", value):
        raise ValidationError("Use a two-letter ISO 3166-1 country code.", code="invalid_country")
    return value


def clean_utm(value: str | None) -> str:
    """Trim and lower-case only (the alias table is applied by
    services.campaigns.normalize_utm)."""
    return str(value or "").strip().lower()[:255]


@lru_cache(maxsize=1)
def free_mail_domains() -> frozenset[str]:
    return frozenset(
        "gmail.com googlemail.com yahoo.com hotmail.com outlook.com live.com icloud.com me.com aol.com "
        "proton.me protonmail.com gmx.com gmx.de web.de mail.com yandex.com qq.com 163.com".split()
    )


# --- Text the database cannot store ---------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable_reason(value: str) -> str | None:
    """Why a string cannot be stored as text (PostgreSQL refuses NUL in text
    and JSON, and a lone UTF-16 surrogate is not Unicode at all), else None.
    Checked the same on every database, so SQLite and PostgreSQL agree."""
    if "\x00" in value:
        return "Contains a NUL character (U+0000), which cannot be stored; remove it."
    match = _SURROGATE.search(value)
    if match:
        return f"Contains a lone surrogate (U+{ord(match.group()):04X}), which is not valid Unicode; send UTF-8 text."
    return None


def find_unstorable(value, path: str = "") -> tuple[str, str] | None:
    """The first ``(dotted path, reason)`` of unstorable text in a JSON-like
    value (dict keys included), or None. Iterative: any depth the JSON parser
    accepted is walked without recursion."""
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            reason = unstorable_reason(node)
            if reason:
                return where, reason
        elif isinstance(node, dict):
            children = []
            for key, item in node.items():
                key_reason = unstorable_reason(key) if isinstance(key, str) else None
                if key_reason:
                    return (where or "non_field_errors"), f"A key: {key_reason}"
                children.append((item, f"{where}.{key}" if where else str(key)))
            stack.extend(reversed(children))  # the first field is reported first
        elif isinstance(node, (list, tuple)):
            stack.extend(reversed([(item, f"{where}.{i}" if where else str(i)) for i, item in enumerate(node)]))
    return None


def refuse_unstorable(data) -> None:
    """ValidationError naming the field of the first unstorable text."""
    found = find_unstorable(data)
    if found:
        raise ValidationError({found[0] or "non_field_errors": [found[1]]})
