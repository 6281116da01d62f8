from django.contrib import admin

from attribution.admin.base import CsvImportMixin
from attribution.imports import SPEND_COLUMNS, spend_import
from attribution.models import CampaignSpend
from martech.admin.base import BaseAdmin


@admin.register(CampaignSpend)
class CampaignSpendAdmin(CsvImportMixin, BaseAdmin):
    change_list_template = "admin/attribution/change_list_import.html"
    import_service = staticmethod(spend_import)
    import_columns = SPEND_COLUMNS
    list_display = ["campaign", "date", "amount", "currency", "impressions", "clicks"]
    list_filter = ["campaign__channel", "currency"]
    list_select_related = ["campaign"]
    search_fields = ["campaign__name", "campaign__utm_campaign"]
    date_hierarchy = "date"
    autocomplete_fields = ["campaign"]
