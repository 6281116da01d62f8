"""The routing configuration as routes read it: the live rule set and its
rules, kept per process under the ``routing.config`` token and current in
every process (``martech.configcache``)."""
from __future__ import annotations

from typing import Any

from martech import configcache
from routing.models import Assignment, Rule, RuleSet
from routing.services.rules import _compiled_cache

Status = Assignment.Status


# --- Configuration: the live rule set and its rules, current in every process
#
# Routes read the published rules with their territory, team and rep rows,
# which sales ops change while leads flow (a rep deactivated, a cap removed,
# a territory moved). They are kept per process under the ``routing.config``
# token of ``martech.configcache``: every save or delete of a rep, team,
# territory, out-of-office period or SLA policy gives the key a new token in
# the same transaction (``configcache.watch`` in ``routing.apps``; the
# services' ``QuerySet.update()``s call ``config_changed``), and a route
# reads the token in the statement that locks its lead, so the change
# applies to the very next lead in every process at no extra round trip.
# Published rule sets never change; the live one's id is read per route.

CONFIG_KEY = "routing.config"
# The benchmark's "freshness checks off" (today's per-process cache): never
# set outside bench/routing.py.
_FRESHNESS = True
_stale_config: list = []


class _Config:
    """What routes read of the configuration under one token: filled as
    rule sets are used (the entries never change once made)."""

    __slots__ = ("rule_sets", "rules")

    def __init__(self):
        self.rule_sets: dict[int, RuleSet] = {}
        self.rules: dict[int, list[Rule]] = {}


def _config(token: Any = configcache._UNREAD) -> _Config:
    if not _FRESHNESS:
        if not _stale_config:
            _stale_config.append(_Config())
        return _stale_config[0]
    return configcache.cached(CONFIG_KEY, _Config, token=token)


def config_changed() -> None:
    """Routing configuration changed without a model save (a
    ``QuerySet.update()``): new token, in the caller's transaction."""
    configcache.bump(CONFIG_KEY)


def _clear_cache() -> None:
    """Forget this process's routing configuration (tests; the benchmark)."""
    configcache.clear()
    _stale_config.clear()
    _compiled_cache.clear()


def _live_pk_query():
    return RuleSet.objects.filter(status=RuleSet.Status.PUBLISHED).order_by("-version").values("pk")[:1]


def _config_token_query():
    from martech.models import ConfigVersion

    return ConfigVersion.objects.filter(key=CONFIG_KEY).values("token")[:1]


def live_rule_set(*, pk: int | None | bool = False, token: Any = configcache._UNREAD) -> RuleSet | None:
    """The latest published version. Its id is read every time (an index
    scan), so a publish in another process is live at once; the row (with
    its fallback team) is kept under the configuration token. ``pk`` and
    ``token`` are those values when the caller read them already
    (``lead_route`` reads both with the lead)."""
    if pk is False:
        pk = _live_pk_query().values_list("pk", flat=True).first()
    if pk is None:
        return None
    sets = _config(token).rule_sets
    found = sets.get(pk)
    if found is None:
        found = sets[pk] = RuleSet.objects.select_related("fallback_team").get(pk=pk)
    return found


def rules_of(rule_set: RuleSet, *, token: Any = configcache._UNREAD) -> list[Rule]:
    """Active rules in order, with their territory, team and rep. A
    published set's are kept under the configuration token (see above); a
    draft's are always read fresh."""
    if rule_set.is_draft:
        return _load_rules(rule_set)
    cache = _config(token).rules
    rules = cache.get(rule_set.pk)
    if rules is None:
        rules = cache[rule_set.pk] = _load_rules(rule_set)
    return rules


def _load_rules(rule_set: RuleSet) -> list[Rule]:
    return list(
        rule_set.rules.filter(is_active=True).select_related("territory", "team", "rep", "rep__team", "rep__backup")
        .order_by("order", "id")
    )
