from django.contrib import admin

from attribution.admin.base import CsvImportMixin
from attribution.imports import OPPORTUNITY_COLUMNS, opportunities_import
from attribution.models import (
    Opportunity, OpportunityContactRole, OpportunityDeletion, OpportunityStage, OpportunityStageChange,
)
from attribution.services import opportunity_delete
from martech.admin.base import BaseAdmin, HistoryAdmin, ReadOnlyMixin


class ContactRoleInline(admin.TabularInline):
    model = OpportunityContactRole
    extra = 0
    autocomplete_fields = ["lead"]
    # Contact roles change through opportunity_set_contact (the CSV import, the API, the CRM sync).
    readonly_fields = ["lead", "role", "is_primary"]
    can_delete = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("lead")

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class StageChangeInline(admin.TabularInline):
    model = OpportunityStageChange
    fk_name = "opportunity"
    extra = 0
    readonly_fields = ["from_stage", "to_stage", "changed_at", "actor", "source"]
    can_delete = False

    def get_queryset(self, request):
        # Each row's title names both stages: one query for all rows.
        return super().get_queryset(request).select_related("from_stage", "to_stage", "actor")

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Opportunity)
class OpportunityAdmin(CsvImportMixin, BaseAdmin):
    """Read and import here; edits go through the API, the CSV import or the
    CRM sync (all call opportunity_upsert), so stage history stays complete."""

    change_list_template = "admin/attribution/change_list_import.html"
    import_service = staticmethod(opportunities_import)
    import_columns = OPPORTUNITY_COLUMNS
    list_display = ["name", "amount", "currency", "stage", "probability", "expected_close_date", "created_at", "closed_at", "source"]
    list_filter = ["stage", "pipeline", "source"]
    list_select_related = ["stage"]
    search_fields = ["name", "salesforce_id", "hubspot_id"]
    date_hierarchy = "created_at"
    inlines = [ContactRoleInline, StageChangeInline]
    readonly_fields = [f.name for f in Opportunity._meta.fields]

    def call_import(self, request, rows):
        return opportunities_import(rows=rows, actor=request.user)

    # Deleting: the opportunity delete permission (roles: martech.roles) is enough. Its credits,
    # contact roles and stage history are its own rows, which no one edits or deletes on their
    # own (their admins are read-only), so Django's per-model delete check would refuse everyone.
    def get_deleted_objects(self, objs, request):
        deleted, model_count, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return deleted, model_count, set(), protected

    def delete_model(self, request, obj):
        opportunity_delete(opportunity=obj, source=f"admin:{request.user.get_username()}", actor=request.user)

    def delete_queryset(self, request, queryset):
        # One deal at a time in key order, each with its credits and rollup days (the action's
        # transaction holds them all: a failure deletes none).
        for opp in queryset.order_by("pk"):
            opportunity_delete(opportunity=opp, source=f"admin:{request.user.get_username()}", actor=request.user)


@admin.register(OpportunityStage)
class OpportunityStageAdmin(HistoryAdmin):
    """The forecast terms of each stage: win probability and the default
    days from entering it to the expected close (a deal's own values win).
    Stages themselves (keys, order, won/lost) come with the pipeline and
    CRM mappings refer to them, so they are not added or removed here."""

    list_display = ["name", "pipeline", "order", "probability", "days_to_close", "is_won", "is_lost"]
    list_filter = ["pipeline"]
    list_select_related = ["pipeline"]
    fields = ["pipeline", "key", "name", "order", "probability", "days_to_close", "is_won", "is_lost"]
    readonly_fields = ["pipeline", "key", "order", "is_won", "is_lost"]
    ordering = ["pipeline", "order"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(OpportunityDeletion)
class OpportunityDeletionAdmin(ReadOnlyMixin, BaseAdmin):
    """Deals deleted here that a CRM held: what each was, who deleted it,
    and whether the CRM's copy was deleted (the CRM outbox sends it; a
    failure is its dead letter) or kept (a connection that only pulls
    deals). A pull never creates these CRM ids here again."""

    list_display = ["name", "amount", "currency", "connection", "remote_id", "status", "deleted_at", "actor",
                    "source", "done_at"]
    list_filter = ["status", "connection"]
    list_select_related = ["connection", "actor"]
    search_fields = ["name", "remote_id"]
    date_hierarchy = "deleted_at"
