"""Pulled records the CRM sent that could not be applied (PullFailure):
pending ones are retried by the next pulls of their type, dead ones wait for
"retry now" here."""
from django.contrib import admin

from martech.admin.base import ConflictRetryAdminMixin
from martech.crm.admin.dead_letters import retry_confirmed
from martech.crm.models import PullFailure
from martech.crm.services import pull_failure_retry


@admin.action(description="Retry now…", permissions=["change"])
def retry_pull_failures(modeladmin, request, queryset):
    retryable = queryset.exclude(status=PullFailure.Status.RESOLVED)
    return retry_confirmed(modeladmin, request, queryset, retryable, action="retry_pull_failures",
                           title="Retry pull failures now", retry=pull_failure_retry, logged="Retried pull failure",
                           done="{n} pull failure(s) due now; their pulls are queued.")


@admin.register(PullFailure)
class PullFailureAdmin(ConflictRetryAdminMixin, admin.ModelAdmin):
    list_display = ("connection", "object", "remote_id", "status", "attempts", "error", "last_failed_at",
                    "next_attempt_at")
    list_filter = ("connection", "object", "status")
    list_select_related = ("connection",)
    search_fields = ("remote_id",)
    readonly_fields = ("connection", "object", "remote_id", "status", "error", "attempts", "first_failed_at",
                       "last_failed_at", "next_attempt_at", "resolved_at")
    ordering = ("-last_failed_at",)
    actions = [retry_pull_failures]

    def has_add_permission(self, request):
        return False
