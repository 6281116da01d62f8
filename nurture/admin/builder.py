"""The journey builder's pages on the workflow admin: add, edit, move and
delete steps through forms, and publish, pause, resume or archive from the
workflow's page. Each view checks the permission, collects the form and
calls one service (``nurture.builder``, ``nurture.services``); a
``ValidationError`` comes back on the form or as an error message."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from martech.admin.base import denied, validation_messages
from martech.db import retry_on_conflict
from nurture.admin.step_forms import STEP_FORMS
from nurture.builder import (
    PATH_LABELS,
    workflow_step_add,
    workflow_step_delete,
    workflow_step_edit,
    workflow_step_move,
)
from nurture.diagram import path_label, workflow_diagram
from nurture.graph import TARGETS, step_order, template_ids
from nurture.labels import STEP_TYPES, step_detail, step_type_label
from nurture.models import Workflow
from nurture.services import (
    BLOCKING_FIELDS,
    email_templates_content,
    workflow_never_fires,
    workflow_publish,
    workflow_set_status,
)

STATUS_ACTIONS = {"pause": "Paused", "resume": "Resumed", "archive": "Archived"}


def never_fires_lines(workflow: Workflow) -> list[str]:
    return [f"{field}: {msg}" for field, msgs in workflow_never_fires(workflow=workflow).items() for msg in msgs]


def warn_never_fires(modeladmin, request, workflow: Workflow, *, skip=()) -> None:
    """One warning message per trigger, goal or awaited event of the
    workflow that can never fire."""
    for field, msgs in workflow_never_fires(workflow=workflow).items():
        if field not in skip:
            for msg in msgs:
                modeladmin.message_user(request, f"{workflow}: {field}: {msg}", messages.WARNING)


def builder_context(request, workflow: Workflow, *, can_change: bool) -> dict:
    """What the workflow page shows of the journey: the diagram, the steps
    in order with their paths, where a step can be added, the warnings."""
    definition = workflow.definition or {}
    steps = definition.get("steps") or {}
    templates = email_templates_content(ids=template_ids(definition))
    edit = (lambda key: reverse("admin:nurture_workflow_step_edit", args=[workflow.pk, key])) if can_change else None
    rows, positions = [], [("start", "At the start")]
    try:
        order = step_order(definition)
    except (TypeError, AttributeError, KeyError):
        order = []
    order += [k for k in steps if k not in order]
    for key in order:
        step = steps[key] if isinstance(steps.get(key), dict) else {}
        kind = step.get("type", "")
        targets = TARGETS.get(kind, ())
        rows.append({
            "key": key, "type": step_type_label(kind), "summary": step_detail(step, templates),
            "paths": [(path_label(step, p) or PATH_LABELS.get(p, p), step.get(p)) for p in targets],
            "can_move": targets == ("next",),
        })
        for p in targets:
            where = f"After “{key}” ({step_type_label(kind).lower()})"
            positions.append((f"{key}:{p}", f"{where}, {path_label(step, p) or PATH_LABELS[p]} path" if len(targets) > 1 else where))
    return {
        "builder_diagram": workflow_diagram(definition, link=edit, templates=templates),
        "builder_rows": rows,
        "builder_positions": positions,
        "builder_step_types": list(STEP_TYPES.items()),
        "builder_warnings": never_fires_lines(workflow),
        "builder_can_change": can_change,
    }


class JourneyBuilderMixin:
    """Mixed into the workflow ModelAdmin."""

    def builder_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/steps/add/", view(self.step_add_view), name="nurture_workflow_step_add"),
            path("<int:pk>/steps/<str:key>/edit/", view(self.step_edit_view), name="nurture_workflow_step_edit"),
            path("<int:pk>/steps/<str:key>/delete/", view(self.step_delete_view), name="nurture_workflow_step_delete"),
            path("<int:pk>/steps/<str:key>/move/", view(self.step_move_view), name="nurture_workflow_step_move"),
            path("<int:pk>/publish/", view(self.publish_view), name="nurture_workflow_publish"),
            path("<int:pk>/status/", view(self.status_view), name="nurture_workflow_status"),
        ]

    def _workflow_for_change(self, request, pk):
        """The workflow, or a redirect saying which permission is missing."""
        wf = get_object_or_404(Workflow, pk=pk)
        if not self.has_change_permission(request, wf):
            return wf, denied(request, f"You can look at “{wf}” but not change its journey: that needs the "
                              "“Can change workflow” permission.", reverse("admin:nurture_workflow_change", args=[wf.pk]))
        return wf, None

    def _back(self, wf: Workflow):
        return redirect(reverse("admin:nurture_workflow_change", args=[wf.pk]) + "#journey")

    def _step_page(self, request, wf: Workflow, form, *, title: str, step_key: str | None = None, **extra):
        return TemplateResponse(request, "admin/nurture/step_form.html", {
            **self.admin_site.each_context(request), "title": title, "opts": self.model._meta, "original": wf,
            "workflow": wf, "form": form, "step_key": step_key, **extra,
        })

    def _service_errors_on(self, form, exc: ValidationError) -> None:
        """A service's errors on the form field they concern (the service
        names a step's JSON key; ``error_fields`` maps it to the form's)."""
        if not hasattr(exc, "error_dict"):
            form.add_error(None, exc)
            return
        for field, msgs in exc.message_dict.items():
            name = form.error_fields.get(field, field)
            if name in form.fields:
                form.add_error(name, msgs)
            else:
                form.add_error(None, [m if field == "__all__" else f"{field}: {m}" for m in msgs])

    def step_add_view(self, request, pk):
        wf, refusal = self._workflow_for_change(request, pk)
        if refusal:
            return refusal
        source = request.POST if request.method == "POST" else request.GET
        step_type, position = source.get("type", ""), source.get("position", "start")
        if step_type not in STEP_FORMS:
            self.message_user(request, f"type: choose a step type (one of {', '.join(STEP_TYPES.values())}).",
                              messages.ERROR)
            return self._back(wf)
        if position != "start" and ":" not in position:
            self.message_user(request, f"position: {position!r} is not a place in this journey.", messages.ERROR)
            return self._back(wf)
        after, _, path_name = position.rpartition(":") if position != "start" else (None, "", "next")
        form_class = STEP_FORMS[step_type]
        form = form_class(request.POST if request.method == "POST" else None, workflow=wf)
        if request.method == "POST" and form.is_valid():
            try:
                key = workflow_step_add(workflow=wf, step_type=step_type, data=form.step_data(), after=after or None,
                                        path=path_name or "next", paths=form.paths(), actor=request.user)
            except ValidationError as exc:
                self._service_errors_on(form, exc)
            else:
                self.message_user(request, f"Added the step “{key}” ({step_type_label(step_type)}).", messages.SUCCESS)
                warn_never_fires(self, request, wf)
                return self._back(wf)
        where = dict(builder_context(request, wf, can_change=True)["builder_positions"]).get(position, position)
        return self._step_page(request, wf, form, title=f"Add a step: {step_type_label(step_type)}",
                               step_type=step_type, position=position, where=where)

    def step_edit_view(self, request, pk, key):
        wf, refusal = self._workflow_for_change(request, pk)
        if refusal:
            return refusal
        step = ((wf.definition or {}).get("steps") or {}).get(key)
        if not isinstance(step, dict) or step.get("type") not in STEP_FORMS:
            self.message_user(request, f"step: no step “{key}” in this journey.", messages.ERROR)
            return self._back(wf)
        form_class = STEP_FORMS[step["type"]]
        form = form_class(request.POST if request.method == "POST" else None, workflow=wf, step_key=key, step=step)
        if request.method == "POST" and form.is_valid():
            try:
                workflow_step_edit(workflow=wf, key=key, data=form.step_data(), paths=form.paths(), actor=request.user)
            except ValidationError as exc:
                self._service_errors_on(form, exc)
            else:
                self.message_user(request, f"Saved the step “{key}”.", messages.SUCCESS)
                warn_never_fires(self, request, wf)
                return self._back(wf)
        return self._step_page(request, wf, form, title=f"Edit step “{key}”: {step_type_label(step['type'])}",
                               step_key=key, step_type=step["type"])

    def step_delete_view(self, request, pk, key):
        wf, refusal = self._workflow_for_change(request, pk)
        if refusal:
            return refusal
        step = ((wf.definition or {}).get("steps") or {}).get(key)
        if step is None:
            self.message_user(request, f"step: no step “{key}” in this journey.", messages.ERROR)
            return self._back(wf)
        if request.method == "POST":
            try:
                removed = workflow_step_delete(workflow=wf, key=key, actor=request.user)
            except ValidationError as exc:
                for line in validation_messages(exc):
                    self.message_user(request, line, messages.ERROR)
            else:
                also = f" and {', '.join(removed[1:])} (reached only through it)" if removed[1:] else ""
                self.message_user(request, f"Deleted the step “{key}”{also}.", messages.SUCCESS)
            return self._back(wf)
        return TemplateResponse(request, "admin/nurture/step_delete.html", {
            **self.admin_site.each_context(request), "title": f"Delete step “{key}”?", "opts": self.model._meta,
            "original": wf, "workflow": wf, "step_key": key, "step_type": step_type_label(step.get("type", "")),
            "summary": step_detail(step, email_templates_content(ids=template_ids({"steps": {key: step}}))), "branches": len(TARGETS.get(step.get("type"), ())) > 1,
        })

    def step_move_view(self, request, pk, key):
        wf, refusal = self._workflow_for_change(request, pk)
        if refusal:
            return refusal
        if request.method == "POST":
            try:
                workflow_step_move(workflow=wf, key=key, direction=request.POST.get("direction", ""), actor=request.user)
            except ValidationError as exc:
                for line in validation_messages(exc):
                    self.message_user(request, line, messages.ERROR)
        return self._back(wf)

    @retry_on_conflict
    def publish_view(self, request, pk):
        wf, refusal = self._workflow_for_change(request, pk)
        if refusal:
            return refusal
        if request.method == "POST":
            try:
                version = workflow_publish(workflow=wf, actor=request.user)
            except ValidationError as exc:
                for line in validation_messages(exc):
                    self.message_user(request, f"Not published: {line}", messages.ERROR)
            else:
                self.message_user(request, f"Published version {version.number}; the journey is active.", messages.SUCCESS)
                warn_never_fires(self, request, wf, skip=BLOCKING_FIELDS)
        return self._back(wf)

    @retry_on_conflict
    def status_view(self, request, pk):
        wf, refusal = self._workflow_for_change(request, pk)
        if refusal:
            return refusal
        action = request.POST.get("action", "")
        if request.method == "POST" and action in STATUS_ACTIONS:
            try:
                workflow_set_status(workflow=wf, action=action, actor=request.user)
            except ValidationError as exc:
                for line in validation_messages(exc):
                    self.message_user(request, line, messages.ERROR)
            else:
                self.message_user(request, f"{STATUS_ACTIONS[action]} “{wf}”.", messages.SUCCESS)
        return self._back(wf)
