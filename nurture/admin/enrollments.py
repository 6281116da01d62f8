from django.contrib import admin

from martech.admin.base import BigTableAdmin, ReadOnlyMixin
from nurture.labels import step_type_label
from nurture.models import Enrollment, StepExecution


class StepExecutionInline(admin.TabularInline):
    model = StepExecution
    fields = ("executed_at", "step", "step_kind", "outcome", "key")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("executed_at", "pk")

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="Step type")
    def step_kind(self, obj: StepExecution) -> str:
        return step_type_label(obj.step_type)


@admin.register(Enrollment)
class EnrollmentAdmin(ReadOnlyMixin, BigTableAdmin):
    list_display = ("lead", "workflow", "version", "status", "step", "due_at", "enrolled_at", "is_test")
    list_filter = ("status", "workflow", "is_test")
    list_select_related = ("lead", "workflow", "version", "version__workflow")
    search_fields = ("lead__email",)
    raw_id_fields = ("lead",)
    inlines = [StepExecutionInline]
    readonly_fields = ("workflow", "version", "lead", "status", "step", "seq", "due_at", "state", "source", "enrolled_at",
                       "ended_at", "exit_reason", "is_test")
