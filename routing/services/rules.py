"""Matching a lead against a rule list: compiled once per list, first match
wins; the same rules as database filters for bulk reads."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Q

from martech.models import Lead
from routing.conditions import condition_compile, condition_q
from routing.models import Rule


class _CompiledRules:
    """A rule list prepared once for matching many leads: each territory's
    criteria normalized, each condition parsed, and the rules indexed by
    country (a rule without countries is under every country), so a lead is
    checked only against the rules its country can match, still in order.
    The checks are those of ``Territory.matches`` and the condition
    language; with 200 rules, re-normalizing territories and re-reading
    conditions per lead was most of a decision's matching CPU."""

    __slots__ = ("rules", "by_country", "no_country", "invalid")

    def __init__(self, rules: list[Rule]):
        self.rules = rules
        # A stored rule whose condition no longer parses (saved before the
        # language refused it, e.g. ``now - 1000000 days``) is skipped, and
        # each decision records why (``rules_invalid``): one bad rule must
        # not stop every route.
        self.invalid: list[tuple[Rule, str]] = []
        entries = []
        for rule in rules:
            try:
                condition = condition_compile(rule.condition)
            except ValidationError as exc:
                self.invalid.append((rule, "; ".join(exc.messages)))
                continue
            terr = rule.territory if rule.territory_id else None
            if terr is not None:
                countries, regions, prefixes, industries = terr._normalized()
                sized = terr.min_employees is not None or terr.max_employees is not None
                check = (regions, prefixes, industries, sized, terr.min_employees, terr.max_employees)
                if not (regions or prefixes or industries or sized):
                    check = None
            else:
                countries, check = frozenset(), None
            entries.append((rule, countries, check, condition))
        all_countries = {c for _, countries, _, _ in entries for c in countries}
        self.no_country = tuple(e for e in entries if not e[1])
        self.by_country = {c: tuple(e for e in entries if not e[1] or c in e[1]) for c in all_countries}

    def match(self, lead: Lead, now: datetime | None) -> Rule | None:
        entries = self.by_country.get((lead.country or "").upper(), self.no_country)
        facts = None
        for rule, _, check, condition in entries:
            if check is not None:
                if facts is None:
                    account = lead.account if lead.account_id else None
                    facts = ((lead.region or "").strip().lower(), (lead.postal_code or "").upper().replace(" ", ""),
                             (account.industry if account else "").strip().lower(),
                             account.employee_count if account else None)
                regions, prefixes, industries, sized, lo, hi = check
                region, postal, industry, size = facts
                if regions and region not in regions:
                    continue
                if prefixes and (not postal or not postal.startswith(prefixes)):
                    continue
                if industries and industry not in industries:
                    continue
                if sized and (size is None or (lo is not None and size < lo) or (hi is not None and size > hi)):
                    continue
            if condition is None or condition.evaluate(lead, now=now):
                return rule
        return None


# Compiled forms by rule list: a published set's list is kept under the
# configuration token (rules_of), so it is compiled once per process and token; a draft's list is compiled per list
# (a simulation matches thousands of leads against one list). The list is
# kept in the entry so its id is never reused while the entry lives.
_compiled_cache: dict[int, _CompiledRules] = {}


def _compiled(rules: list[Rule]) -> _CompiledRules:
    compiled = _compiled_cache.get(id(rules))
    if compiled is None or compiled.rules is not rules:
        if len(_compiled_cache) > 64:
            _compiled_cache.clear()
        compiled = _compiled_cache[id(rules)] = _CompiledRules(rules)
    return compiled


def rule_match(rules: list[Rule], lead: Lead, *, now: datetime | None = None) -> Rule | None:
    """First match wins."""
    return _compiled(rules).match(lead, now)


def rules_invalid(rules: list[Rule]) -> list[tuple[Rule, str]]:
    """The rules of ``rules`` skipped because their condition does not parse
    (rule, "column N: reason")."""
    return _compiled(rules).invalid


def _skipped_steps(rules: list[Rule]) -> list[dict[str, Any]]:
    return [{"step": "rule skipped", "rule": r.name, "rule_id": r.pk, "reason": f"invalid condition: {why}"}
            for r, why in rules_invalid(rules)]


def rule_lead_q(rule: Rule) -> Q:
    # Raises ValidationError (ConditionError) for a condition that does not parse.
    q = condition_q(rule.condition)
    if rule.territory_id:
        q &= rule.territory.to_q()
    return q


SCORE_FIELDS = frozenset({"total_score", "fit_score", "engagement_score"})


def rules_read_score(rules: list[Rule]) -> bool:
    """Does a rule (that parses) read a score?"""
    compiled = _compiled(rules)
    bad = {r.pk for r, _ in compiled.invalid}
    return any(r.pk not in bad and (c := condition_compile(r.condition)) is not None and c.fields & SCORE_FIELDS
               for r in rules)
