"""Configuration writes: rule-set versions (drafts, publish, rollback) and
the rows they name (reps, teams, territories, SLA policies)."""
from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from martech.db import retry_on_conflict
from routing.conditions import condition_validate
from routing.models import Assignment, Rep, Rule, RuleSet, Team
from routing.services.decision import _lock_rep_with_team
from routing.services.queue import waiting_assign_later
from routing.services.route import rep_deactivate

log = logging.getLogger(__name__)
Status = Assignment.Status


# --- Rule-set versions --------------------------------------------------------------


@transaction.atomic
def rule_set_copy(*, source: RuleSet | None, actor=None, note: str = "") -> RuleSet:
    """A new draft holding a copy of ``source``'s rules (None: empty)."""
    draft = RuleSet.objects.create(
        name=source.name if source else "Routing rules", fallback_team=source.fallback_team if source else None,
        copied_from=source, note=note or (f"copy of {source}" if source else ""),
    )
    if source is not None:
        Rule.objects.bulk_create([
            Rule(rule_set=draft, order=r.order, name=r.name, condition=r.condition, territory_id=r.territory_id,
                 action=r.action, team_id=r.team_id, rep_id=r.rep_id, is_active=r.is_active)
            for r in source.rules.order_by("order", "id")
        ])
    return draft


def _validate_for_publish(rule_set: RuleSet) -> None:
    errors: dict[str, list[str]] = {}
    if rule_set.fallback_team_id is None:
        errors["fallback_team"] = ["A fallback team is required, so no lead is left unassigned."]
    else:
        # A fallback nobody can take leads from would only fill the waiting queue.
        team = rule_set.fallback_team
        if not team.is_active:
            errors["fallback_team"] = [f"The fallback team {team.name!r} is inactive."]
        elif not team.reps.filter(is_active=True).exists():
            errors["fallback_team"] = [f"The fallback team {team.name!r} has no active reps to take leads."]
    for rule in rule_set.rules.all():
        try:
            rule.full_clean(exclude=["rule_set"])
        except ValidationError as exc:
            for f, msgs in exc.message_dict.items():
                errors.setdefault(f"rules.{rule.name}.{f}", []).extend(msgs)
    if errors:
        raise ValidationError(errors)


@retry_on_conflict
@transaction.atomic
def rule_set_publish(*, rule_set: RuleSet, actor=None) -> RuleSet:
    """Publish a draft as the next version (immutable from then on); it is
    live at once: routes read the live set's id with every lead. Versions
    are numbered under a lock on the published rows, FOR NO KEY UPDATE: it
    serializes publishes without blocking routes, whose assignments
    reference the live set (a foreign-key check takes KEY SHARE, which a
    FOR UPDATE lock would block). Publishing locks no team or rep row (the
    rules' foreign keys only take KEY SHARE, which the routes' FOR NO KEY
    UPDATE team and rep locks allow), so it never waits for a route holding
    them, nor a route for it (docs/architecture.md, "Write paths")."""
    rule_set = RuleSet.objects.select_for_update(no_key=True).get(pk=rule_set.pk)
    if not rule_set.is_draft:
        raise ValidationError({"rule_set": [f"{rule_set} is already published; copy it to a new draft to change it."]})
    _validate_for_publish(rule_set)
    list(RuleSet.objects.select_for_update(no_key=True).filter(status=RuleSet.Status.PUBLISHED).values_list("id", flat=True))
    top = RuleSet.objects.filter(status=RuleSet.Status.PUBLISHED).aggregate(m=Max("version"))["m"] or 0
    rule_set.status, rule_set.version = RuleSet.Status.PUBLISHED, top + 1
    rule_set.published_at = timezone.now()
    rule_set.published_by = actor if getattr(actor, "is_authenticated", False) else None
    rule_set.save(update_fields=["status", "version", "published_at", "published_by"])
    log.info("routing rule set %s published by %s", rule_set, actor)
    return rule_set


@retry_on_conflict
@transaction.atomic
def rule_set_rollback(*, to: RuleSet, actor=None) -> RuleSet:
    """Make an earlier version live again: its rules are published as a new
    version (the history only grows, every assignment keeps its version).
    One short transaction that locks no team or rep (see ``rule_set_publish``)."""
    if to.is_draft:
        raise ValidationError({"rule_set": ["Only a published version can be rolled back to."]})
    copy = rule_set_copy(source=to, actor=actor, note=f"rollback to v{to.version}")
    return rule_set_publish(rule_set=copy, actor=actor)


def rule_edit_check(rule_set: RuleSet) -> None:
    """Published versions are immutable; every editor (admin, API) asks."""
    if not rule_set.is_draft:
        raise ValidationError({"rule_set": [f"{rule_set} is published and cannot be changed; copy it to a new draft."]})


def condition_check(text: str) -> None:
    try:
        condition_validate(text)
    except ValidationError as exc:
        raise ValidationError({"condition": exc.messages}) from None


@retry_on_conflict
@transaction.atomic
def config_save(*, instance, data: dict[str, Any], actor=None):
    """Create or change a routing configuration row (admin and API). Runs
    the model's validation; a rep switched to inactive has their open leads
    rerouted in the same transaction. The save gives the routing
    configuration a new token (``configcache.watch`` in ``routing.apps``),
    so every process routes the next lead by it."""
    if isinstance(instance, Rep) and instance.pk:
        new_team = data.get("team")
        _lock_rep_with_team(instance.pk, getattr(new_team, "pk", new_team))
    was_active = Rep.objects.filter(pk=instance.pk).values_list("is_active", flat=True).first() \
        if isinstance(instance, Rep) and instance.pk else None
    for key, value in data.items():
        setattr(instance, key, value)
    instance.full_clean()
    instance.save()
    if isinstance(instance, Rep) and was_active and not instance.is_active:
        rep_deactivate(rep=instance, actor=actor)
    if isinstance(instance, (Rep, Team)) and getattr(instance, "is_active", False):
        # A rep or team that may now take leads: serve the waiting queue soon
        # (in the background, not in this request) instead of at the next
        # scheduled run.
        waiting_assign_later()
    return instance


# What a rule payload may carry (API, imports, tests): anything else is an
# error naming the key, never dropped (a dropped "conditon" matched every lead).
RULE_KEYS = frozenset({"order", "name", "condition", "territory", "territory_id", "action", "team", "team_id", "rep",
                       "rep_id", "is_active"})


@transaction.atomic
def rule_set_save_draft(*, rule_set: RuleSet | None, data: dict[str, Any], rules: list[dict[str, Any]] | None,
                        actor=None) -> RuleSet:
    """Create a draft or change one; ``rules`` (when given) replaces the
    draft's rules in the given order. Published versions are refused."""
    if rule_set is None:
        rule_set = RuleSet()
    else:
        rule_set = RuleSet.objects.select_for_update().get(pk=rule_set.pk)
        rule_edit_check(rule_set)
    for key, value in data.items():
        setattr(rule_set, key, value)
    rule_set.full_clean()
    rule_set.save()
    if rules is not None:
        rule_set.rules.all().delete()
        errors: dict[str, list[str]] = {}
        built = []
        for i, row in enumerate(rules):
            unknown = sorted(set(row) - RULE_KEYS)
            if unknown:
                for key in unknown:
                    errors.setdefault(f"rules[{i}].{key}", []).append(
                        f"Unknown key {key!r}; a rule takes {', '.join(sorted(RULE_KEYS))}.")
                continue
            rule = Rule(rule_set=rule_set, **{"order": i, **row})
            try:
                rule.full_clean(exclude=["rule_set"])
            except ValidationError as exc:
                for f, msgs in exc.message_dict.items():
                    errors.setdefault(f"rules[{i}].{f}", []).extend(msgs)
            built.append(rule)
        if errors:
            raise ValidationError(errors)
        Rule.objects.bulk_create(built)
    return rule_set


@transaction.atomic
def rule_set_delete_draft(*, rule_set: RuleSet) -> None:
    rule_edit_check(rule_set)
    rule_set.delete()
