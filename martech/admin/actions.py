"""Admin actions shared by the martech screens (docs/style.md, 8 and 10).

Each action collects input on a confirmation page, needs a permission, calls
a service once per object with the acting user, logs to the admin history
(LogEntry) and reports what happened. A ValidationError from the service
becomes a message for that object; the others go on.
"""
from __future__ import annotations

from collections import Counter

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ValidationError
from django.db import transaction
from django.template.response import TemplateResponse

from martech.admin.base import validation_messages
from martech.models import Lead, LifecycleStage, QuarantinedEvent


def _confirmation(modeladmin, request, queryset, *, action: str, title: str, template: str, **context):
    """The intermediate page, shaped like Django's delete_selected one: it
    re-posts the selected ids and the action name with ``apply`` set."""
    opts = modeladmin.model._meta
    return TemplateResponse(
        request,
        template,
        {
            **modeladmin.admin_site.each_context(request),
            "title": title,
            "opts": opts,
            "app_label": opts.app_label,
            "queryset": queryset,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "select_across": request.POST.get("select_across", "0"),
            "media": modeladmin.media,
            **context,
        },
    )


# --- Leads ------------------------------------------------------------------


class StageChangeForm(forms.Form):
    stage = forms.ModelChoiceField(queryset=LifecycleStage.objects.filter(is_active=True), label="New stage")
    reason = forms.CharField(max_length=255, help_text="Kept in the lead's stage history.")


@admin.action(description="Change lifecycle stage…", permissions=["change"])
def change_lifecycle_stage(modeladmin, request, queryset):
    from martech.services.leads import lead_change_stage

    form = StageChangeForm(request.POST if "apply" in request.POST else None)
    if form.is_valid():
        stage, reason = form.cleaned_data["stage"], form.cleaned_data["reason"]
        changed = 0
        for lead in queryset.select_related("lifecycle_stage"):
            try:
                with transaction.atomic():
                    transition = lead_change_stage(
                        lead=lead, to_stage=stage, reason=reason, actor=request.user, source="admin"
                    )
            except ValidationError as exc:
                for line in validation_messages(exc):
                    modeladmin.message_user(request, f"{lead}: {line}", messages.ERROR)
                continue
            if transition is not None:
                changed += 1
                modeladmin.log_change(request, lead, f"Changed lifecycle stage to {stage.name}: {reason}")
        modeladmin.message_user(
            request, f"Moved {changed} lead(s) to {stage.name}; {queryset.count() - changed} already there or failed."
        )
        return None
    return _confirmation(
        modeladmin,
        request,
        queryset,
        action="change_lifecycle_stage",
        title="Change lifecycle stage",
        template="admin/martech/lead/action_change_stage.html",
        form=form,
    )


class MergeForm(forms.Form):
    primary = forms.ModelChoiceField(
        queryset=Lead.objects.none(), widget=forms.RadioSelect, empty_label=None, label="Keep"
    )
    reason = forms.CharField(max_length=255, initial="duplicate", help_text="Kept on the merged lead.")

    def __init__(self, *args, leads, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["primary"].queryset = leads


# Django offers an action when the user has ANY of its permissions; a merge
# deletes the duplicate, so the admin's has_merge_permission wants both.
@admin.action(description="Merge two leads…", permissions=["merge"])
def merge_leads(modeladmin, request, queryset):
    from martech.services.leads import lead_merge

    leads = list(queryset.order_by("created_at", "id")[:3])
    if len(leads) != 2:
        modeladmin.message_user(request, "Select exactly two leads to merge.", messages.WARNING)
        return None
    form = MergeForm(request.POST if "apply" in request.POST else None, leads=queryset, initial={"primary": leads[0]})
    if form.is_valid():
        primary = form.cleaned_data["primary"]
        duplicate = next(lead for lead in leads if lead.pk != primary.pk)
        duplicate_label = str(duplicate)
        try:
            with transaction.atomic():
                merged = lead_merge(
                    primary=primary, duplicate=duplicate, actor=request.user, reason=form.cleaned_data["reason"]
                )
        except ValidationError as exc:
            for line in validation_messages(exc):
                modeladmin.message_user(request, line, messages.ERROR)
            return None
        reason = form.cleaned_data["reason"]
        modeladmin.log_change(request, merged, f"Merged {duplicate_label} into this lead: {reason}")
        modeladmin.message_user(request, f"Merged {duplicate_label} into {merged}.")
        return None
    return _confirmation(
        modeladmin,
        request,
        queryset,
        action="merge_leads",
        title="Merge two leads",
        template="admin/martech/lead/action_merge.html",
        form=form,
        leads=leads,
    )


# --- Quarantine -------------------------------------------------------------


def _quarantine_action(modeladmin, request, queryset, *, service, verb: str, action: str):
    pending = queryset.filter(status=QuarantinedEvent.Status.PENDING)
    if "apply" not in request.POST:
        return _confirmation(
            modeladmin,
            request,
            pending,
            action=action,
            title=f"{verb.capitalize()} quarantined events",
            template="admin/martech/confirm_action.html",
            verb=verb,
            skipped=queryset.count() - pending.count(),
        )
    outcomes: Counter[str] = Counter()
    for item in pending:
        try:
            with transaction.atomic():
                outcome = service(item=item, actor=request.user)
        except ValidationError as exc:
            for line in validation_messages(exc):
                modeladmin.message_user(request, f"{item}: {line}", messages.ERROR)
            continue
        outcomes[str(outcome)] += 1
        modeladmin.log_change(request, item, f"{verb.capitalize()}: {outcome}")
    done = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())) or "nothing"
    modeladmin.message_user(request, f"{verb.capitalize()} of {sum(outcomes.values())} quarantined event(s): {done}.")
    return None


@admin.action(description="Replay selected quarantined events…", permissions=["change"])
def replay_quarantined(modeladmin, request, queryset):
    # Imported here: ingest is the capture layer's, and pulls in much more.
    from martech.services.ingest import quarantine_replay

    return _quarantine_action(
        modeladmin, request, queryset, service=quarantine_replay, verb="replay", action="replay_quarantined"
    )


@admin.action(description="Discard selected quarantined events…", permissions=["change"])
def discard_quarantined(modeladmin, request, queryset):
    from martech.services.quarantine import quarantine_discard

    return _quarantine_action(
        modeladmin, request, queryset, service=quarantine_discard, verb="discard", action="discard_quarantined"
    )


# --- Websites ---------------------------------------------------------------


@admin.action(description="Rotate publishable key…", permissions=["change"])
def rotate_website_key(modeladmin, request, queryset):
    from martech.services.tracker import website_rotate_key

    if "apply" not in request.POST:
        return _confirmation(
            modeladmin,
            request,
            queryset,
            action="rotate_website_key",
            title="Rotate publishable keys",
            template="admin/martech/website/action_rotate_key.html",
        )
    rotated = 0
    for website in queryset:
        website_rotate_key(website=website, actor=request.user)
        modeladmin.log_change(request, website, "Rotated the publishable key")
        rotated += 1
    modeladmin.message_user(request, f"Rotated the publishable key of {rotated} website(s); paste their new snippets.")
    return None
