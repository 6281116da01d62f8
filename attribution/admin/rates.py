"""Exchange rates (edited by hand, imported and exported as CSV through
django-import-export, fetched by the scheduled task) and the forecast
snapshots (read-only: the daily task writes them)."""
from __future__ import annotations

from django.contrib import admin
from import_export.admin import ImportExportMixin

from attribution.models import ExchangeRate, ForecastSnapshot
from attribution.money import company_currency, exchange_rate_delete, exchange_rate_upsert
from attribution.resources import ExchangeRateResource
from martech.admin.base import BaseAdmin, HistoryAdmin, ReadOnlyMixin, ServiceSaveMixin


@admin.register(ExchangeRate)
class ExchangeRateAdmin(ServiceSaveMixin, ImportExportMixin, HistoryAdmin):
    """One unit of a currency in the company currency, from a day on. A
    change recomputes the attribution of the deals it moves (after commit).
    Currency and day are fixed once saved: to move a rate, add the new day
    and delete the old."""

    resource_classes = [ExchangeRateResource]
    list_display = ["currency", "date", "rate", "in_company_currency", "source", "updated_at"]
    list_filter = ["currency", "source"]
    search_fields = ["currency"]
    date_hierarchy = "date"
    fields = ["currency", "date", "rate", "source"]

    @admin.display(description="Company currency")
    def in_company_currency(self, obj: ExchangeRate) -> str:
        return company_currency()

    def get_readonly_fields(self, request, obj=None):
        return ["currency", "date", "source"] if obj is not None else ["source"]

    def has_import_permission(self, request) -> bool:
        # An import adds and changes rates: both permissions (the library's default lets any staff user in).
        return self.has_add_permission(request) and self.has_change_permission(request)

    def has_export_permission(self, request) -> bool:
        return self.has_view_permission(request)

    def save_model(self, request, obj: ExchangeRate, form, change) -> None:
        saved = self.call_service(
            request, exchange_rate_upsert, currency=obj.currency, date=obj.date, rate=obj.rate,
            source=f"admin ({request.user.get_username()})",
        )
        if saved is not None:
            obj.pk = saved[0].pk

    def delete_model(self, request, obj: ExchangeRate) -> None:
        exchange_rate_delete(rate=obj)

    def delete_queryset(self, request, queryset) -> None:
        for rate in queryset:
            exchange_rate_delete(rate=rate)


@admin.register(ForecastSnapshot)
class ForecastSnapshotAdmin(ReadOnlyMixin, BaseAdmin):
    list_display = ["taken_on", "month", "source", "open_deals", "pipeline", "weighted", "commit", "currency", "unconverted_deals"]
    list_filter = ["source"]
    date_hierarchy = "taken_on"
