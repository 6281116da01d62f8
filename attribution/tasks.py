"""django-q2 tasks: thin, take ids, call one service. All are idempotent
(the services replace rows rather than add them), so a redelivery is safe,
and each is a transaction boundary run again on a deadlock or serialization
failure (martech.db.retry_on_conflict)."""
from __future__ import annotations

from attribution.computation import attribution_compute, attribution_refresh_leads
from martech.db import retry_on_conflict
from martech.models import Event


@retry_on_conflict
def touchpoints_refresh(event_ids: list[int]) -> dict[str, int]:
    """Rebuild the touchpoints of the leads behind ``event_ids``, then the
    credits of their opportunities."""
    lead_ids = set(Event.objects.filter(pk__in=event_ids, lead__isnull=False).values_list("lead_id", flat=True))
    return attribution_refresh_leads(lead_ids=lead_ids)


@retry_on_conflict
def lead_merged(lead_id: int) -> dict[str, int]:
    """A merge moved another lead's events, touchpoints and contact roles
    onto ``lead_id``: its touchpoints (one lead-creation touch, sessions
    across both histories) and its deals' credits and rollup days again."""
    return attribution_refresh_leads(lead_ids=[lead_id])


@retry_on_conflict
def opportunity_attribute(opportunity_id: int) -> dict[str, int]:
    return attribution_compute(opportunity_ids=[opportunity_id])


def attribution_recompute_all() -> dict[str, int]:
    """Nightly full run: relearns the data-driven models over every journey
    (incremental runs reuse their last values) and catches anything missed."""
    return attribution_compute()


@retry_on_conflict
def opportunities_attribute(opportunity_ids: list[int]) -> dict[str, int]:
    """Recompute a batch of deals' credits (what an exchange rate change moved)."""
    return attribution_compute(opportunity_ids=opportunity_ids)


@retry_on_conflict
def exchange_rates_fetch() -> dict[str, int]:
    """Fetch the configured exchange rates (MARTECH_RATES_URL); nothing when none is set."""
    from attribution.money import exchange_rates_fetch as fetch

    return fetch()


def forecast_snapshot() -> dict[str, int]:
    """Today's forecast per month and source, for accuracy later (idempotent per day)."""
    from attribution.forecast import forecast_snapshot_take

    return forecast_snapshot_take()
