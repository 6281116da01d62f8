from django.contrib import admin, messages

from martech.admin.actions import _confirmation
from martech.admin.base import BaseAdmin, BigTableAdmin, ReadOnlyMixin
from nurture.labels import reason_label
from nurture.models import Message, Suppression
from nurture.services import messages_mark_sent, messages_resend


class NeedsAttentionFilter(admin.SimpleListFilter):
    """Messages a person has to settle: in doubt (a worker died during the
    send and the backend cannot say whether it went out), held by the
    workflow's in-doubt policy "hold for a person"."""

    title = "attention"
    parameter_name = "attention"

    def lookups(self, request, model_admin):
        return [("needs", "Needs attention (in doubt)")]

    def queryset(self, request, queryset):
        if self.value() == "needs":
            return queryset.filter(status=Message.Status.IN_DOUBT)
        return queryset


def _settle(modeladmin, request, queryset, *, service, action: str, verb: str, title: str):
    pending = queryset.filter(status=Message.Status.IN_DOUBT)
    if "apply" not in request.POST:
        return _confirmation(modeladmin, request, pending, action=action, title=title,
                             template="admin/martech/confirm_action.html", verb=verb,
                             skipped=queryset.count() - pending.count())
    # The service audits each message (admin log) in the transaction that settles it.
    done = service(ids=list(pending.values_list("pk", flat=True)), actor=request.user)
    modeladmin.message_user(request, f"{verb.capitalize()}: {done} in-doubt message(s).", messages.SUCCESS)
    return None


@admin.action(description="Resend the selected in-doubt messages (risks a duplicate)…", permissions=["resolve"])
def resend(modeladmin, request, queryset):
    return _settle(modeladmin, request, queryset, service=messages_resend, action="resend", verb="resend",
                   title="Resend in-doubt messages")


@admin.action(description="Mark the selected in-doubt messages sent…", permissions=["resolve"])
def mark_sent(modeladmin, request, queryset):
    return _settle(modeladmin, request, queryset, service=messages_mark_sent, action="mark_sent", verb="mark sent",
                   title="Mark in-doubt messages sent")


@admin.register(Message)
class MessageAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ("created_at", "channel", "to", "subject", "topic", "status", "reason", "opened_at", "clicked_at",
                    "workflow", "step")
    list_filter = (NeedsAttentionFilter, "status", "channel", "topic")
    list_select_related = ("workflow", "topic")
    search_fields = ("to", "key")
    raw_id_fields = ("lead",)
    actions = [resend, mark_sent]

    @admin.display(description="Why", ordering="status_reason")
    def reason(self, obj: Message) -> str:
        return reason_label(obj.status_reason)

    def has_resolve_permission(self, request) -> bool:
        # Rows stay read-only in their form; settling one is a change.
        return request.user.has_perm("nurture.change_message")


@admin.register(Suppression)
class SuppressionAdmin(BaseAdmin):
    list_display = ("address", "reason", "created_at", "detail")
    list_filter = ("reason",)
    search_fields = ("address",)
