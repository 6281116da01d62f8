"""API clients: one bearer token per calling system, scoped.

Only the token's SHA-256 and a short prefix (to recognise it in the admin)
are stored; the token itself is returned once, to the caller of
``api_client_create``, and cannot be shown again.
"""
from __future__ import annotations

import secrets
from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction

from martech.models import ApiClient

TOKEN_PREFIX_LENGTH = 8


@transaction.atomic
def api_client_create(*, name: str, scopes: Iterable[str]) -> tuple[ApiClient, str]:
    """Create an API client with a fresh random token. Returns ``(client, token)``.

    Raises ValidationError naming ``name`` (blank or taken) or ``scopes``
    (empty or unknown)."""
    name = (name or "").strip()
    scopes = list(dict.fromkeys(s.strip() for s in scopes))  # keep order, drop repeats
    errors: dict[str, list[str]] = {}
    if not name:
        errors["name"] = ["Give the client a name."]
    elif ApiClient.objects.filter(name=name).exists():
        errors["name"] = [f"An API client named {name!r} already exists."]
    valid = set(ApiClient.Scope.values)
    bad = [s for s in scopes if s not in valid]
    if bad:
        errors["scopes"] = [f"Unknown scope(s): {', '.join(bad)}. Valid: {', '.join(sorted(valid))}."]
    elif not scopes:
        errors["scopes"] = ["Give at least one scope."]
    if errors:
        raise ValidationError(errors)
    token = secrets.token_urlsafe(32)
    client = ApiClient(
        name=name,
        scopes=scopes,
        token_prefix=token[:TOKEN_PREFIX_LENGTH],
        token_hash=ApiClient.hash_token(token),
    )
    client.full_clean()
    client.save()
    return client, token
