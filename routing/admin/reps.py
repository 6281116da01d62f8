"""Reps, with who is eligible *now* at a glance (availability column)."""
from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count, Prefetch
from django.utils import timezone
from django.utils.html import format_html

from martech.admin.actions import _confirmation
from routing import engine, labels, services
from routing.admin.common import ConfigAdmin
from routing.admin.widgets import WorkingHoursWidget
from routing.models import OutOfOffice, Rep

_LABELS = labels.SKIP_REASONS


class OutOfOfficeInline(admin.TabularInline):
    model = OutOfOffice
    extra = 0
    fields = ["starts_at", "ends_at", "note"]


@admin.action(description="Deactivate and reroute their open leads…", permissions=["change"])
def deactivate_and_reroute(modeladmin, request, queryset):
    if "apply" not in request.POST:
        return _confirmation(modeladmin, request, queryset, action="deactivate_and_reroute",
                             title="Deactivate reps and reroute their open leads",
                             template="admin/martech/confirm_action.html", verb="deactivate and reroute")
    total = 0
    for rep in queryset:
        moved = services.rep_deactivate(rep=rep, actor=request.user)
        modeladmin.log_change(request, rep, f"Deactivated; {moved} open lead(s) rerouted.")
        total += moved
    modeladmin.message_user(request, f"{queryset.count()} rep(s) deactivated; {total} open lead(s) rerouted.", messages.SUCCESS)
    return None


class EligibleFilter(admin.SimpleListFilter):
    title = "eligible now"
    parameter_name = "eligible"

    def lookups(self, request, model_admin):
        return [("yes", "Eligible now"), ("no", "Not eligible now")]

    def queryset(self, request, queryset):
        if self.value() not in ("yes", "no"):
            return queryset
        now = timezone.now()
        ids = [r.pk for r in _with_status(queryset, now) if (r.unavailable is None) == (self.value() == "yes")]
        return queryset.filter(pk__in=ids)


def _with_status(queryset, now):
    reps = list(queryset.prefetch_related(None))
    away: dict[int, list] = {}
    for rep_id, s, e in OutOfOffice.objects.filter(rep__in=reps, starts_at__lte=now, ends_at__gt=now).values_list(
            "rep_id", "starts_at", "ends_at"):
        away.setdefault(rep_id, []).append((s, e))
    for rep in reps:
        rep.unavailable = engine.unavailable_reason(rep, now, away.get(rep.pk, []))
    return reps


@admin.register(Rep)
class RepAdmin(ConfigAdmin):
    list_display = ["name", "team", "eligible_now", "local_time", "open_leads", "max_open_leads", "max_per_day", "weight",
                    "is_active"]
    list_filter = [EligibleFilter, "team", "is_active"]
    search_fields = ["name", "email"]
    list_select_related = ["team"]
    autocomplete_fields = ["user", "manager", "backup"]
    inlines = [OutOfOfficeInline]
    actions = [deactivate_and_reroute]
    fieldsets = [
        (None, {"fields": ["name", "email", "user", "team", "is_active"]}),
        ("Availability", {"fields": ["time_zone", "working_hours", "holidays"]}),
        ("Capacity and distribution", {"fields": ["max_open_leads", "max_per_day", "weight"]}),
        ("People", {"fields": ["manager", "backup"]}),
        ("CRM owner ids", {"fields": ["hubspot_owner_id", "salesforce_user_id"]}),
    ]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "working_hours":
            kwargs["widget"] = WorkingHoursWidget
            kwargs["help_text"] = ""  # the widget explains itself; the model's help shows the JSON
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_queryset(self, request):
        now = timezone.now()
        return super().get_queryset(request).annotate(
            open_count=Count("assignments", filter=services.open_assignments_q("assignments__"))
        ).prefetch_related(Prefetch(
            "absences", queryset=OutOfOffice.objects.filter(starts_at__lte=now, ends_at__gt=now), to_attr="current_absences"))

    def get_changelist_instance(self, request):
        # The page's capped reps counted at once, by the router's own count
        # (open and today per the rep's local day): "at capacity" here is
        # what the router decides.
        cl = super().get_changelist_instance(request)
        loads = services.rep_loads(list(cl.result_list), timezone.now())
        for rep in cl.result_list:
            rep.routing_loads = loads
        return cl

    @admin.display(description="Eligible now")
    def eligible_now(self, obj: Rep) -> str:
        absences = [(a.starts_at, a.ends_at) for a in getattr(obj, "current_absences", [])]
        now = timezone.now()
        reason = engine.unavailable_reason(obj, now, absences)
        if reason is None:
            _, _, cap = services.rep_capacity(obj, now, getattr(obj, "routing_loads", None))
            if cap:
                return format_html('<span class="routing-cap" style="color:#b26b00">● {}</span>', _LABELS[cap])
            return format_html('<span class="routing-eligible" style="color:#1a7f37">● {}</span>', "eligible")
        return format_html('<span class="routing-away" style="color:#b42318">○ {}</span>', _LABELS[reason])

    @admin.display(description="Local time")
    def local_time(self, obj: Rep) -> str:
        from zoneinfo import ZoneInfo

        return timezone.now().astimezone(ZoneInfo(obj.time_zone or "UTC")).strftime("%a %H:%M")

    @admin.display(description="Open leads", ordering="open_count")
    def open_leads(self, obj: Rep) -> int:
        return obj.open_count
