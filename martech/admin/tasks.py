"""Sales follow-up tasks (handoff, nurture, by hand); "mark done" goes
through services.tasks.task_complete."""
from __future__ import annotations

from django.contrib import admin, messages
from django.db import transaction

from martech.admin.base import BigTableAdmin
from martech.models import SalesTask


@admin.action(description="Mark done", permissions=["change"])
def mark_done(modeladmin, request, queryset):
    from martech.services.tasks import task_complete

    done = 0
    for task in queryset.filter(status=SalesTask.Status.OPEN):
        with transaction.atomic():
            done += bool(task_complete(task=task, source="admin"))
    modeladmin.message_user(request, f"{done} task(s) marked done.", messages.SUCCESS)


@admin.register(SalesTask)
class SalesTaskAdmin(BigTableAdmin):
    list_display = ("subject", "lead", "owner", "status", "due_at", "source", "completed_at")
    list_select_related = ("lead", "owner")
    list_filter = ("status", "source")
    search_fields = ("subject", "=lead__email", "key")
    readonly_fields = ("key", "lead", "status", "completed_at", "source", "salesforce_id", "hubspot_id",
                       "created_at", "updated_at")
    fields = ("subject", "description", "owner", "due_at", *readonly_fields)
    raw_id_fields = ("owner",)
    actions = [mark_done]

    def has_add_permission(self, request) -> bool:
        # Tasks are made by services (task_create is idempotent by key).
        return False


def _queued_task_str(self) -> str:
    return f"Queued task {self.name() or self.task_id()} ({self.func()})"


# django-q2's queue model (registered in the admin when the ORM is the
# broker) has no __str__: its change page was titled "OrmQ object (N)".
# Given one here, where the ops console is assembled, rather than in a fork.
from django_q.models import OrmQ  # noqa: E402

if "__str__" not in OrmQ.__dict__:
    OrmQ.__str__ = _queued_task_str
