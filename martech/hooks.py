"""In-transaction hooks on lead and account writes.

Signals (``martech.signals``) announce after commit, for work that may lag.
Some work must be decided in the *same* transaction as the write, or it can
be lost or doubled: the CRM outbox row for a changed mapped field (docs/architecture.md,
Data rules: recorded in the same transaction that decides it), a rescoring
request. Such code registers here. Every write path calls these: the single
upserts, stage changes, merges, the bulk CSV import and event touches. A hook
takes ids and field names, never instances, so set-based paths call it once
per batch; it must be cheap (insert rows, register an ``on_commit``), and an
exception rolls the write back.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol


class ChangeHook(Protocol):
    def __call__(self, *, ids: list[int], fields: frozenset[str], created: bool, source: str) -> None: ...


_lead_hooks: list[ChangeHook] = []
_account_hooks: list[ChangeHook] = []
_task_hooks: list[ChangeHook] = []
# Change hooks of later stages' records (e.g. "opportunities"), by kind.
_kind_hooks: dict[str, list[ChangeHook]] = {"leads": _lead_hooks, "accounts": _account_hooks, "tasks": _task_hooks}
# Named providers a later stage supplies to an earlier one (see provide()).
_providers: dict[str, Callable] = {}


def on_leads_changed(fn: ChangeHook) -> ChangeHook:
    """Register ``fn(ids=, fields=, created=, source=)``; usable as a decorator.
    Registering the same function twice keeps one."""
    if fn not in _lead_hooks:
        _lead_hooks.append(fn)
    return fn


def on_accounts_changed(fn: ChangeHook) -> ChangeHook:
    if fn not in _account_hooks:
        _account_hooks.append(fn)
    return fn


def on_tasks_changed(fn: ChangeHook) -> ChangeHook:
    if fn not in _task_hooks:
        _task_hooks.append(fn)
    return fn


def _run(hooks: list[ChangeHook], ids: Iterable[int], fields: Iterable[str], created: bool, source: str) -> None:
    ids = [i for i in ids if i is not None]
    if not ids or not hooks:
        return
    frozen = frozenset(fields)
    for fn in list(hooks):
        fn(ids=ids, fields=frozen, created=created, source=source)


def leads_changed(*, ids: Iterable[int], fields: Iterable[str], created: bool = False, source: str = "") -> None:
    """Called by every lead write path inside its transaction. ``fields`` are
    model field names (``properties`` for any custom property)."""
    _run(_lead_hooks, ids, fields, created, source)


def accounts_changed(*, ids: Iterable[int], fields: Iterable[str], created: bool = False, source: str = "") -> None:
    _run(_account_hooks, ids, fields, created, source)


def tasks_changed(*, ids: Iterable[int], fields: Iterable[str], created: bool = False, source: str = "") -> None:
    _run(_task_hooks, ids, fields, created, source)


def on_records_changed(kind: str, fn: ChangeHook) -> ChangeHook:
    """Register a change hook for any kind of record, including a later
    stage's (attribution calls ``records_changed("opportunities", ...)`` in
    its writing transaction; the CRM outbox subscribes without importing it).
    "leads", "accounts" and "tasks" are the same lists as the functions above."""
    hooks = _kind_hooks.setdefault(kind, [])
    if fn not in hooks:
        hooks.append(fn)
    return fn


def records_changed(kind: str, *, ids: Iterable[int], fields: Iterable[str], created: bool = False,
                    source: str = "") -> None:
    _run(_kind_hooks.get(kind, []), ids, fields, created, source)


def provide(name: str, fn: Callable) -> None:
    """A later stage offers a capability to the core without the core
    importing it, e.g. routing: ``provide("assign_owner", fn)`` where
    ``fn(*, lead_id, reason, actor=None) -> bool`` assigns an owner (True) or
    declines (False). The SQL handoff calls it and falls back to its default
    queue when no provider is there. One provider per name; the last wins."""
    _providers[name] = fn


def call(name: str, /, **kwargs):
    """Call the provider of ``name``; None when nobody provides it."""
    fn = _providers.get(name)
    return None if fn is None else fn(**kwargs)


def registered() -> dict[str, list[Callable]]:
    """What is registered (for tests and the admin's diagnostics)."""
    return {**{kind: list(fns) for kind, fns in _kind_hooks.items()}, "providers": dict(_providers)}


# --- The lead 360 page's sections ---------------------------------------------


@dataclass(frozen=True)
class LeadSection:
    """One block of the lead 360 page (``martech.selectors.lead_360``).

    ``build(*, lead, user) -> dict`` reads the section's rows for one lead in
    a fixed number of queries, whatever the lead's history size (cap long
    lists), and returns the context of ``template``. ``permissions`` are the
    ``app_label.codename`` view permissions of the models it shows: a user
    missing one never sees the section and its queries never run."""

    key: str
    title: str
    order: int
    template: str
    permissions: tuple[str, ...]
    build: Callable[..., dict]


_lead_sections: dict[str, LeadSection] = {}


def provide_lead_section(section: LeadSection) -> None:
    """A stage (the core included) adds a section to the lead 360 page
    without the core importing it. One section per key; the last wins."""
    _lead_sections[section.key] = section


def lead_sections() -> list[LeadSection]:
    return sorted(_lead_sections.values(), key=lambda s: (s.order, s.key))
