"""Read-only history: runs, webhook receipts, pulled owners, cursors."""
from django.contrib import admin

from martech.crm.models import CrmOwner, SyncCursor, SyncRun, WebhookReceipt


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(SyncRun)
class SyncRunAdmin(_ReadOnly):
    list_display = ("connection", "kind", "object", "started_at", "finished_at", "pushed", "pulled", "skipped",
                    "failed", "retried", "recovered", "api_calls", "error")
    list_filter = ("connection", "kind")
    list_select_related = ("connection",)
    show_full_result_count = False


@admin.register(WebhookReceipt)
class WebhookReceiptAdmin(_ReadOnly):
    list_display = ("provider", "event_id", "received_at", "processed_at", "error")
    list_filter = ("provider",)


@admin.register(CrmOwner)
class CrmOwnerAdmin(_ReadOnly):
    list_display = ("connection", "remote_id", "email", "first_name", "last_name", "is_active")
    search_fields = ("email", "remote_id")


@admin.register(SyncCursor)
class SyncCursorAdmin(_ReadOnly):
    list_display = ("connection", "object", "value", "updated_at")
