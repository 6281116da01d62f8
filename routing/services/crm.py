"""The CRM connectors' questions to routing (``martech.hooks`` providers):
the CRM owner ids of reps, and reps linked to pulled CRM owners."""
from __future__ import annotations

from routing.models import Assignment, Rep
from routing.services.config import config_changed


def crm_owner_id_provider(*, lead_id: int, provider: str) -> str | None:
    """``martech.hooks.call("crm_owner_id", ...)``: the CRM owner id of the
    lead's current rep, for the connector's owner push."""
    rep = Rep.objects.filter(assignments__lead_id=lead_id, assignments__is_current=True).first()
    if rep is None:
        return None
    value = {"hubspot": rep.hubspot_owner_id, "salesforce": rep.salesforce_user_id}.get(provider)
    return value or None


_CRM_ID_FIELD = {"hubspot": "hubspot_owner_id", "salesforce": "salesforce_user_id"}


def crm_owner_ids_provider(*, lead_ids: list[int], provider: str) -> dict[int, str]:
    """``hooks.call("crm_owner_ids", ...)``: ``crm_owner_id`` for many leads
    in one query (a pulled page's push states): lead id -> the CRM owner id
    of its current rep, for the leads that have one."""
    column = _CRM_ID_FIELD.get(provider)
    if column is None or not lead_ids:
        return {}
    # One current assignment per lead (routing_one_current_assignment).
    return dict(Assignment.objects.filter(lead_id__in=lead_ids, is_current=True, rep__isnull=False)
                .exclude(**{f"rep__{column}": ""}).values_list("lead_id", f"rep__{column}"))


def crm_user_owner_id_provider(*, user_id: int, provider: str) -> str | None:
    """``hooks.call("crm_user_owner_id", ...)``: the CRM owner id of the rep
    who is this user (an account's or opportunity's owner, a task's)."""
    column = _CRM_ID_FIELD.get(provider)
    if column is None:
        return None
    return Rep.objects.filter(user_id=user_id).exclude(**{column: ""}).values_list(column, flat=True).first()


def crm_owner_user_id_provider(*, remote_owner_id: str, provider: str) -> int | None:
    """``hooks.call("crm_owner_user_id", ...)``: the user behind a pulled CRM owner id."""
    column = _CRM_ID_FIELD.get(provider)
    if column is None or not remote_owner_id:
        return None
    return Rep.objects.filter(**{column: remote_owner_id}, user__isnull=False).values_list(
        "user_id", flat=True).first()


def crm_owners_pulled_provider(*, provider: str, owners: list[dict]) -> int:
    """``hooks.call("crm_owners_pulled", ...)``: after the CRM sync pulls the
    owners (HubSpot owners, Salesforce users), give each rep whose email
    matches an owner that owner's id. A rep's id set by hand is kept.
    An owner the CRM lists as inactive (an archived HubSpot owner, a
    deactivated Salesforce user) is unlinked from its reps, so nothing is
    assigned to it any more (the CRM refuses an inactive owner).
    Returns how many reps were linked."""
    column = _CRM_ID_FIELD.get(provider)
    if column is None:
        return 0
    inactive = [o["remote_id"] for o in owners if not o.get("is_active", True)]
    if inactive:
        Rep.objects.filter(**{f"{column}__in": inactive}).update(**{column: ""})
    by_email = {o["email"].lower(): o["remote_id"] for o in owners if o.get("email") and o.get("is_active", True)}
    linked = 0
    for rep in Rep.objects.filter(**{column: ""}):
        remote_id = by_email.get(rep.email.lower())
        if remote_id:
            Rep.objects.filter(pk=rep.pk).update(**{column: remote_id})
            linked += 1
    if linked:
        config_changed()  # the rules' reps carry the CRM owner ids
    return linked
