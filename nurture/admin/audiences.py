from django.contrib import admin
from django.http import HttpResponse

from martech.admin.base import BigTableAdmin
from martech.models import Lead
from nurture import channels
from nurture.models import AudienceMember


def _export(queryset, fmt):
    lead_ids = queryset.values_list("lead_id", flat=True)
    rows = channels.audience_rows(Lead.objects.filter(pk__in=lead_ids).only("email", "phone"))
    resp = HttpResponse(channels.audience_csv(rows, fmt=fmt), content_type="text/csv")
    resp["Content-Disposition"] = f'attachment; filename="audience-{fmt}.csv"'
    return resp


@admin.action(description="Export hashed for Google Customer Match (CSV)", permissions=["view"])
def export_google(modeladmin, request, queryset):
    return _export(queryset, "google")


@admin.action(description="Export hashed for LinkedIn Matched Audiences (CSV)", permissions=["view"])
def export_linkedin(modeladmin, request, queryset):
    return _export(queryset, "linkedin")


@admin.action(description="Push the selected members' audiences through the audience adapter", permissions=["change"])
def push_audiences(modeladmin, request, queryset):
    names = sorted(set(queryset.values_list("audience", flat=True)))
    for name in names:
        channels.audience_push(audience=name)
    modeladmin.message_user(request, f"Pushed {len(names)} audience(s): {', '.join(names)}.")


@admin.register(AudienceMember)
class AudienceMemberAdmin(BigTableAdmin):
    list_display = ("audience", "lead", "added_at")
    list_filter = ("audience",)
    list_select_related = ("lead",)
    raw_id_fields = ("lead",)
    actions = [export_google, export_linkedin, push_audiences]
