"""Reads for reports: the SLA report per team and rep."""
from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime
from typing import Any

from routing import labels
from routing.models import Assignment


def sla_report(*, since: datetime, until: datetime, now: datetime) -> dict[str, list[dict[str, Any]]]:
    """Assignments made in [since, until) that had an SLA, per team and per
    rep: how many, touched within SLA, breached (touched late, or untouched
    past due), still open within SLA, the share within SLA (of those decided)
    and the median time to first touch in minutes."""
    rows = (Assignment.objects.filter(assigned_at__gte=since, assigned_at__lt=until, sla_due_at__isnull=False)
            .values_list("team__name", "rep__name", "assigned_at", "sla_due_at", "first_touch_at"))
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for team, rep, assigned, due, touched in rows:
        for key in (("team", team or "—"), ("rep", rep or "—")):
            g = groups.setdefault(key, {"name": key[1], "assigned": 0, "within": 0, "breached": 0, "open": 0, "minutes": []})
            g["assigned"] += 1
            if touched is not None:
                g["minutes"].append((touched - assigned).total_seconds() / 60)
                g["within" if touched <= due else "breached"] += 1
            elif now > due:
                g["breached"] += 1
            else:
                g["open"] += 1
    out: dict[str, list] = defaultdict(list)
    for (kind, _), g in sorted(groups.items()):
        decided = g["within"] + g["breached"]
        out[kind].append({
            "name": g["name"], "assigned": g["assigned"], "within_sla": g["within"], "breached": g["breached"],
            "open": g["open"], "share_within_sla": round(g["within"] / decided, 4) if decided else None,
            "median_minutes_to_first_touch": round(statistics.median(g["minutes"]), 1) if g["minutes"] else None,
        })
    return {"teams": out["team"], "reps": out["rep"]}


# --- The lead 360 page and the lead list (martech offers the places) ---------

LEAD_ASSIGNMENTS = 20


def lead_routing(*, lead, user=None) -> dict:
    """The lead 360 page's routing section: the current owner and rep, and
    the newest routing decisions with their reasons. Two queries (the
    assignments with rep, team and actor; their escalations)."""
    from martech.selectors import user_label

    rows = list(Assignment.objects.filter(lead=lead).select_related("rep", "team", "actor", "sla_policy")
                .prefetch_related("escalations").order_by("-created_at", "-id")[:LEAD_ASSIGNMENTS])
    current = next((a for a in rows if a.is_current), None)
    facts = []
    if current is not None:
        who = current.rep.name if current.rep else "—"
        if current.team:
            who = f"{who} ({current.team.name})"
        facts.append(("Routed rep", who if current.status == Assignment.Status.ASSIGNED else current.get_status_display()))
    history = [{
        "a": a,
        "who": a.rep.name if a.rep else (a.team.name if a.team else "—"),
        "by": user_label(a.actor),
        "escalations": [(e.get_level_display(), e.created_at, labels.escalation_detail(e.detail)) for e in a.escalations.all()],
    } for a in rows]
    return {"current": current, "history": history, "capped": len(rows) >= LEAD_ASSIGNMENTS, "facts": facts}


def lead_list_annotations() -> dict:
    """The lead list's routed rep: the rep of the lead's current assignment
    (the unique partial index routing_one_current_assignment finds it)."""
    from django.db.models import OuterRef, Subquery

    from martech.selectors import ROUTED_REP

    rep = (Assignment.objects.filter(lead=OuterRef("pk"), is_current=True, status=Assignment.Status.ASSIGNED)
           .values("rep__name")[:1])
    return {ROUTED_REP: Subquery(rep)}
