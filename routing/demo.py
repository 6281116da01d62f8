"""Demo routing setup for the quick start: teams, reps, territories, an SLA
policy, a published rule set, and the newest demo leads routed. Idempotent:
rows are found by name, reps get their manager and backup only when this run
made them, the rule set is published only when none is, and of the newest
ROUTED_LEADS leads only those never routed are routed (so a second run routes
nobody, where "the newest unrouted leads" would route the next batch).

The demo routes "as of" the latest weekday afternoon (ROUTE_AT_UTC) before
the seeding, when both the North American and the European reps are at
work: routed at the real clock, a demo seeded at night or on a weekend
sent nearly every lead to the one rep whose hours covered that moment."""
from __future__ import annotations

from datetime import datetime, time, timedelta
from datetime import timezone as dt_timezone

from django.db import transaction
from django.utils import timezone

from martech.models import Lead
from routing import services
from routing.models import OutOfOffice, Rep, Rule, RuleSet, SlaPolicy, Team, Territory

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
# How many of the newest leads the demo routes (the rest wait for ops to try
# the rule set on them).
ROUTED_LEADS = 300
# The UTC time of day the demo routes at: 10:00-11:00 in New York, 16:00-17:00
# in Berlin and Paris, the night shift's hours in Sydney.
ROUTE_AT_UTC = time(15, 0)


def business_moment(now: datetime) -> datetime:
    """The latest weekday ROUTE_AT_UTC at or before ``now``."""
    moment = datetime.combine(now.astimezone(dt_timezone.utc).date(), ROUTE_AT_UTC, tzinfo=dt_timezone.utc)
    if moment > now:
        moment -= timedelta(days=1)
    while moment.weekday() >= 5:  # Saturday, Sunday
        moment -= timedelta(days=1)
    return moment

TEAMS = [
    ("Inbound North America", Team.Method.ROUND_ROBIN),
    ("EMEA", Team.Method.WEIGHTED),
    ("Enterprise", Team.Method.CAPACITY),
    ("Inbound overflow", Team.Method.LEAST_LOADED),
]
REPS = [
    # name, team, time zone, hours, weight, max open
    ("Avery Brooks", "Inbound North America", "America/New_York", ("09:00", "17:00"), 1, None),
    ("Jordan Lee", "Inbound North America", "America/Chicago", ("08:00", "16:00"), 1, None),
    ("Sam Patel", "Inbound North America", "America/Los_Angeles", ("09:00", "18:00"), 1, None),
    ("Lena Fischer", "EMEA", "Europe/Berlin", ("09:00", "17:30"), 3, None),
    ("Tom Baker", "EMEA", "Europe/London", ("08:30", "17:00"), 2, None),
    ("Claire Dubois", "EMEA", "Europe/Paris", ("09:00", "17:00"), 1, None),
    ("Morgan Reyes", "Enterprise", "America/New_York", ("08:00", "18:00"), 1, 40),
    ("Hiro Tanaka", "Enterprise", "Asia/Tokyo", ("09:00", "18:00"), 1, 25),
    ("Riley Night", "Inbound overflow", "Australia/Sydney", ("22:00", "06:00"), 1, None),  # a night shift
    ("Casey Kim", "Inbound overflow", "UTC", None, 1, None),  # no hours: always on
]
TERRITORIES = [
    {"name": "North America", "countries": ["US", "CA"]},
    {"name": "EMEA", "countries": ["GB", "DE", "FR", "NL", "ES", "IT", "SE", "IE"]},
    {"name": "Enterprise (1,000+ employees)", "min_employees": 1000},
]


@transaction.atomic
def demo_seed(*, progress: bool = False, now: datetime | None = None) -> dict[str, int]:
    """``now`` is the seeding's clock (tests pass a fixed one)."""
    now = now or timezone.now()
    created = {"routing_teams": 0, "routing_reps": 0, "routing_territories": 0, "routing_rule_sets": 0, "routing_assignments": 0}
    sla, _ = SlaPolicy.objects.get_or_create(name="Inbound: 4 business hours",
                                             defaults={"first_touch_hours": 4, "notify_manager_after_hours": 2,
                                                       "reassign_after_hours": 4})
    teams = {}
    for name, method in TEAMS:
        teams[name], made = Team.objects.get_or_create(name=name, defaults={"method": method, "sla_policy": sla})
        created["routing_teams"] += made
    reps = {}
    for name, team, tz, hours, weight, cap in REPS:
        email = name.lower().replace(" ", ".") + "@sales.example"
        reps[name], made = Rep.objects.get_or_create(email=email, defaults={
            "name": name, "team": teams[team], "time_zone": tz, "weight": weight, "max_open_leads": cap,
            "working_hours": {d: [list(hours)] for d in WEEKDAYS} if hours else {},
            "hubspot_owner_id": str(1000 + len(reps)), "salesforce_user_id": f"005DEMO{len(reps):08d}"[:18],
        })
        created["routing_reps"] += made
        if made and name == "Claire Dubois":  # away this afternoon: the availability column shows it
            OutOfOffice.objects.create(rep=reps[name], starts_at=now - timedelta(hours=1), ends_at=now + timedelta(hours=4),
                                       note="dentist")
    if created["routing_reps"]:
        # Only on the run that made the reps: a manager or backup ops cleared
        # later stays cleared.
        boss = reps["Morgan Reyes"]
        Rep.objects.filter(team=teams["Inbound North America"], manager__isnull=True).update(manager=boss)
        Rep.objects.filter(pk=reps["Sam Patel"].pk, backup__isnull=True).update(backup=reps["Avery Brooks"])
        services.config_changed()  # updates, not saves: routes in every process must see them
    territories = {}
    for spec in TERRITORIES:
        territories[spec["name"]], made = Territory.objects.get_or_create(name=spec["name"], defaults=spec)
        created["routing_territories"] += made
    if not RuleSet.objects.filter(status=RuleSet.Status.PUBLISHED).exists():
        draft = RuleSet.objects.create(name="Routing rules", fallback_team=teams["Inbound overflow"], note="demo")
        Rule.objects.bulk_create([
            Rule(rule_set=draft, order=1, name="Enterprise accounts", territory=territories["Enterprise (1,000+ employees)"],
                 action=Rule.Action.TEAM, team=teams["Enterprise"]),
            Rule(rule_set=draft, order=2, name="North America", territory=territories["North America"],
                 action=Rule.Action.TEAM, team=teams["Inbound North America"]),
            Rule(rule_set=draft, order=3, name="EMEA", territory=territories["EMEA"], action=Rule.Action.TEAM,
                 team=teams["EMEA"]),
        ])
        services.rule_set_publish(rule_set=draft)
        created["routing_rule_sets"] += 1
    newest = Lead.objects.order_by("-created_at", "-pk").values("pk")[:ROUTED_LEADS]
    unrouted = list(Lead.objects.filter(pk__in=newest, routing_assignments__isnull=True)
                    .order_by("created_at", "pk").values_list("pk", "created_at"))
    moment = business_moment(now)
    # A lead is never routed before it exists: one created after the moment
    # (rare: demo leads convert days before the seeding) is routed when it came.
    batches = [([pk for pk, at in unrouted if at <= moment], moment)]
    batches += [([pk], min(at + timedelta(minutes=5), now)) for pk, at in unrouted if at > moment]
    for lead_ids, at in batches:
        if lead_ids:
            counts = services.leads_route_batch(lead_ids=lead_ids, trigger="new_lead", reason="demo seed", now=at)
            created["routing_assignments"] += sum(v for k, v in counts.items() if k != "kept")
    return created
