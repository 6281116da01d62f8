"""Reads for reports: the SLA report per team and rep."""
from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime
from typing import Any

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
