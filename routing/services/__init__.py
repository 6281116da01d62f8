"""Routing writes: route a lead, the waiting queue, reroutes, first touch,
SLA escalation, rule-set versions. Every function is keyword-only; admin,
API, signal receivers, tasks and tests call these, by their names here.

One module per concern, each importing only those before it:

- ``prepared``: the hot reads' SQL built once (Django compiler internals)
- ``rules``: matching a lead against a rule list
- ``config``: the live rule set and its rules, current in every process
- ``selectors``: accounts, a team's reps, loads and capacity
- ``decision``: which rep or queue, and why; the row locks
- ``route``: one lead routed and written; previews and reroutes
- ``queue``: the waiting queue
- ``lifecycle``: first touch and closing an assignment
- ``sla``: SLA escalation
- ``rule_sets``: rule-set versions and the configuration rows
- ``crm``: the CRM connectors' hooks
- ``batch``: many leads in one transaction

Locking order (always the same, so two workers never deadlock; docs/architecture.md,
"Write paths"): the lead row, then its current
assignment, then team rows (the round-robin pointer; the rule's team before
the fallback team; a batch all of its teams in id order, the fallback
last), then, for capped reps only, rep rows (a route at most one, last; a
batch all of its capped reps in id order). Team and rep locks are FOR NO
KEY UPDATE, so the foreign-key checks of a publish or rollback (KEY SHARE)
never wait for them.
"""
from __future__ import annotations

from routing.models import Assignment, open_assignments_q
from routing.services.batch import assignments_insert, leads_route_batch
from routing.services.config import CONFIG_KEY, _clear_cache, config_changed, live_rule_set, rules_of
from routing.services.crm import (
    crm_owner_id_provider,
    crm_owner_ids_provider,
    crm_owner_user_id_provider,
    crm_owners_pulled_provider,
    crm_user_owner_id_provider,
)
from routing.services.decision import Decision, decide
from routing.services.lifecycle import assignment_close, assignment_touch, crm_owner_changed, first_touch_record
from routing.services.queue import waiting_assign, waiting_assign_later
from routing.services.route import (
    assign_owner_provider,
    lead_preview,
    lead_route,
    leads_reroute_after_first_score,
    owner_set,
    rep_deactivate,
    unrouted_sweep,
)
from routing.services.rule_sets import (
    RULE_KEYS,
    condition_check,
    config_save,
    rule_edit_check,
    rule_set_copy,
    rule_set_delete_draft,
    rule_set_publish,
    rule_set_rollback,
    rule_set_save_draft,
)
from routing.services.rules import SCORE_FIELDS, rule_lead_q, rule_match, rules_invalid, rules_read_score
from routing.services.selectors import (
    RepRow,
    account_match,
    has_cap,
    rep_absences_from,
    rep_capacity,
    rep_loads,
    team_reps,
)
from routing.services.sla import (
    escalation_recipients,
    routing_admin_emails,
    sla_escalate,
    teams_without_escalation_path,
)

Status = Assignment.Status
Trigger = Assignment.Trigger
Lifecycle = Assignment.Lifecycle
CloseReason = Assignment.CloseReason

# ``_clear_cache``: tests and the benchmark forget the per-process configuration.
__all__ = [
    "_clear_cache",
    "CONFIG_KEY", "RULE_KEYS", "SCORE_FIELDS", "CloseReason", "Decision", "Lifecycle", "RepRow", "Status", "Trigger",
    "account_match", "assign_owner_provider", "assignment_close", "assignment_touch", "assignments_insert",
    "condition_check", "config_changed", "config_save", "crm_owner_changed", "crm_owner_id_provider",
    "crm_owner_ids_provider",
    "crm_owner_user_id_provider", "crm_owners_pulled_provider", "crm_user_owner_id_provider", "decide",
    "escalation_recipients", "open_assignments_q", "first_touch_record", "has_cap", "lead_preview", "lead_route",
    "leads_reroute_after_first_score", "leads_route_batch", "live_rule_set", "owner_set", "rep_absences_from",
    "rep_capacity", "rep_deactivate", "rep_loads", "routing_admin_emails", "rule_edit_check", "rule_lead_q",
    "rule_match", "rule_set_copy", "rule_set_delete_draft", "rule_set_publish", "rule_set_rollback",
    "rule_set_save_draft", "rules_invalid", "rules_of", "rules_read_score", "sla_escalate", "team_reps",
    "teams_without_escalation_path", "unrouted_sweep", "waiting_assign", "waiting_assign_later",
]
