from collections import Counter

from django.contrib import admin, messages

from martech.admin.actions import _confirmation
from martech.crm.models import DeadLetter, OutboxItem
from martech.crm.services import dead_letter_retry


@admin.action(description="Retry selected dead letters…", permissions=["change"])
def retry_dead_letters(modeladmin, request, queryset):
    dead = queryset.filter(status=OutboxItem.Status.DEAD)
    if "apply" not in request.POST:
        return _confirmation(modeladmin, request, dead, action="retry_dead_letters", title="Retry dead letters",
                             template="admin/martech/confirm_action.html", verb="retry",
                             skipped=queryset.count() - dead.count())
    items = list(dead)
    n = dead_letter_retry(items=items, actor=request.user)
    for item in items:
        modeladmin.log_change(request, item, "Retried dead letter")
    modeladmin.message_user(request, f"{n} dead letter(s) queued again.", messages.SUCCESS)
    return None


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ("connection", "object", "local_id", "attempts", "last_error", "updated_at")
    list_filter = ("connection", "object")
    readonly_fields = ("connection", "object", "local_id", "status", "attempts", "last_error", "created_at",
                       "updated_at", "next_attempt_at")
    actions = [retry_dead_letters]

    def get_queryset(self, request):
        return super().get_queryset(request).filter(status=OutboxItem.Status.DEAD).select_related("connection")

    def has_add_permission(self, request):
        return False


@admin.register(OutboxItem)
class OutboxAdmin(admin.ModelAdmin):
    list_display = ("connection", "object", "local_id", "status", "attempts", "next_attempt_at", "last_error")
    list_filter = ("status", "connection", "object")
    list_select_related = ("connection",)
    show_full_result_count = False
    readonly_fields = DeadLetterAdmin.readonly_fields

    def has_add_permission(self, request):
        return False
