from django.contrib import admin

from martech.admin.base import ConflictRetryAdminMixin
from martech.crm.models import FieldMapping, LifecycleMapping


@admin.register(FieldMapping)
class FieldMappingAdmin(ConflictRetryAdminMixin, admin.ModelAdmin):
    # FieldMapping.clean() (transforms.validate_mapping) refuses an invalid
    # mapping on save with the offending field named.
    list_display = ("connection", "object", "local_field", "remote_field", "direction", "kind", "required",
                    "system_of_record")
    list_filter = ("connection", "object", "direction", "kind")
    search_fields = ("local_field", "remote_field")


@admin.register(LifecycleMapping)
class LifecycleMappingAdmin(ConflictRetryAdminMixin, admin.ModelAdmin):
    list_display = ("connection", "remote_value", "stage", "push_default")
    list_filter = ("connection",)
