"""Factories for routing models."""
from __future__ import annotations

import factory

from routing import models


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Team

    name = factory.Sequence(lambda n: f"Team {n}")
    method = models.Team.Method.ROUND_ROBIN


ALWAYS = {}  # no working hours = always on


class RepFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Rep

    name = factory.Sequence(lambda n: f"Rep {n}")
    email = factory.Sequence(lambda n: f"rep{n}@sales.example")
    team = factory.SubFactory(TeamFactory)
    time_zone = "UTC"
    working_hours = factory.LazyFunction(dict)


def away_rep(team: models.Team) -> models.Rep:
    """An active rep of ``team`` who is out of office for years around now:
    publishing accepts the team as a fallback (it has an active rep), and
    routing finds nobody eligible in it (its leads wait)."""
    import datetime as dt

    from django.utils import timezone

    rep = RepFactory(team=team, name=f"away from {team.name}")
    now = timezone.now()
    models.OutOfOffice.objects.create(rep=rep, starts_at=now - dt.timedelta(days=3650),
                                      ends_at=now + dt.timedelta(days=3650))
    return rep


class TerritoryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Territory

    name = factory.Sequence(lambda n: f"Territory {n}")


class RuleSetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.RuleSet

    fallback_team = factory.SubFactory(TeamFactory)


class RuleFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Rule

    rule_set = factory.SubFactory(RuleSetFactory)
    name = factory.Sequence(lambda n: f"Rule {n}")
    order = factory.Sequence(lambda n: n)


class SlaPolicyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.SlaPolicy

    name = factory.Sequence(lambda n: f"SLA {n}")
    first_touch_hours = 2
    notify_manager_after_hours = 1
    reassign_after_hours = 2
