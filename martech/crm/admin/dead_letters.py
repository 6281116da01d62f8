
from django.contrib import admin, messages
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from martech.admin.base import ConflictRetryAdminMixin
from martech.admin.actions import _confirmation
from martech.crm import objects
from martech.crm.models import DeadLetter, OutboxItem
from martech.crm.services import dead_letter_retry


def retry_confirmed(modeladmin, request, queryset, retryable, *, action: str, title: str, retry, logged: str,
                    done: str):
    """The shape of every CRM retry action (push dead letters, pull
    failures): a confirmation page for the retryable part of the selection,
    then ``retry(items=..., actor=...)`` (a service), one admin log entry
    per item, and ``done`` with the count as the message."""
    if "apply" not in request.POST:
        return _confirmation(modeladmin, request, retryable, action=action, title=title,
                             template="admin/martech/confirm_action.html", verb="retry",
                             skipped=queryset.count() - retryable.count())
    items = list(retryable)
    n = retry(items=items, actor=request.user)
    for item in items:
        modeladmin.log_change(request, item, logged)
    modeladmin.message_user(request, done.format(n=n), messages.SUCCESS)
    return None


@admin.action(description="Retry selected dead letters…", permissions=["change"])
def retry_dead_letters(modeladmin, request, queryset):
    return retry_confirmed(modeladmin, request, queryset, queryset.filter(status=OutboxItem.Status.DEAD),
                           action="retry_dead_letters", title="Retry dead letters", retry=dead_letter_retry,
                           logged="Retried dead letter", done="{n} dead letter(s) queued again.")


@admin.display(description="Local record")
def record_link(item: OutboxItem) -> str:
    """The local record's admin page (a lead, account, deal ...), or its id
    when its type is not registered or has no admin page."""
    try:
        model = objects.get(item.object).model_class
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[item.local_id])
    except (LookupError, NoReverseMatch):
        return f"{item.object} #{item.local_id}"
    return format_html('<a href="{}">{} #{}</a>', url, model._meta.verbose_name, item.local_id)


@admin.register(DeadLetter)
class DeadLetterAdmin(ConflictRetryAdminMixin, admin.ModelAdmin):
    list_display = ("connection", "object", record_link, "attempts", "last_error", "updated_at")
    list_filter = ("connection", "object")
    readonly_fields = ("connection", "object", "local_id", record_link, "status", "attempts", "last_error",
                       "created_at", "updated_at", "next_attempt_at")
    actions = [retry_dead_letters]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(status=OutboxItem.Status.DEAD).select_related("connection")

    def has_add_permission(self, request):
        return False


@admin.register(OutboxItem)
class OutboxAdmin(ConflictRetryAdminMixin, admin.ModelAdmin):
    list_display = ("connection", "object", record_link, "status", "attempts", "next_attempt_at", "last_error")
    list_filter = ("status", "connection", "object")
    list_select_related = ("connection",)
    show_full_result_count = False
    readonly_fields = DeadLetterAdmin.readonly_fields

    def has_add_permission(self, request):
        return False
