"""Accounts: create-or-update deduplicated by normalized domain."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from martech import fields as declared
from martech import hooks
from martech.models import Account
from martech.services.normalize import normalize_country, normalize_domain

ACCOUNT_WRITABLE_FIELDS = declared.writable(declared.ACCOUNT_FIELDS)
_UNIQUE_KEYS = ("domain", "salesforce_id", "hubspot_id")


def _clean(data: dict[str, Any]) -> dict[str, Any]:
    errors: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        try:
            if key not in ACCOUNT_WRITABLE_FIELDS:
                raise ValidationError("Unknown account field.")
            if key == "domain":
                out[key] = normalize_domain(value)
            elif key == "country":
                out[key] = normalize_country(value)
            elif key == "currency":
                out[key] = str(value or "").strip().upper()
            elif key in ("salesforce_id", "hubspot_id"):
                out[key] = str(value or "").strip() or None
            elif key in ("name", "industry"):
                out[key] = "" if value is None else str(value).strip()
            else:
                out[key] = value
        except ValidationError as exc:
            errors.setdefault(key, []).extend(exc.messages)
    if errors:
        raise ValidationError(errors)
    return out


@transaction.atomic
def account_upsert(
    *, data: dict[str, Any], account: Account | None = None, source: str = ""
) -> tuple[Account, bool]:
    """Create or update an account. Returns ``(account, created)``.

    Without ``account`` the row is found by normalized domain
    (``https://www.Acme.com/`` and ``acme.com`` are one account) and created
    when there is none. With ``account`` (an edit addressed by id) that row is
    updated, and taking a domain or CRM id another account holds is refused
    naming the field. Concurrent creates for one domain make one account: the
    unique index decides and the loser updates the winner's row.
    """
    cleaned = _clean(data)
    created = False
    if account is not None:
        account = Account.objects.select_for_update().get(pk=account.pk)
    elif cleaned.get("domain"):
        account = Account.objects.select_for_update().filter(domain=cleaned["domain"]).first()
    if account is None:
        account = Account()
        created = True
    for key, value in cleaned.items():
        setattr(account, key, value)
    errors: dict[str, list[str]] = {}
    for key in _UNIQUE_KEYS:
        value = getattr(account, key)
        if value and Account.objects.filter(**{key: value}).exclude(pk=account.pk).exists():
            errors[key] = ["Another account already has this value."]
    if errors:
        raise ValidationError(errors)
    # Uniqueness was checked just above (with the locked row excluded).
    account.full_clean(validate_unique=False, validate_constraints=False)
    try:
        with transaction.atomic():  # savepoint: the race loser can go on
            account.save()
    except IntegrityError:
        if not (created and cleaned.get("domain")):
            raise
        winner = Account.objects.select_for_update().get(domain=cleaned["domain"])
        return account_upsert(data=data, account=winner, source=source)[0], False
    hooks.accounts_changed(ids=[account.pk], fields=cleaned, created=created, source=source)
    return account, created
