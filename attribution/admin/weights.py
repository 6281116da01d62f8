from django.contrib import admin

from attribution.models import PositionWeights
from martech.admin.base import HistoryAdmin


@admin.register(PositionWeights)
class PositionWeightsAdmin(HistoryAdmin):
    """The custom position-based model. Each share (percent, renormalized) goes
    to the touch holding that role; a touch with several roles gets their sum;
    "other" is spread evenly over the touches holding none; a share whose role
    no touch holds is dropped. Recompute with ``compute_attribution --model custom``."""

    list_display = ["__str__", "first", "lead_creation", "opportunity_creation", "closed_won", "last", "other", "updated_at"]

    def has_add_permission(self, request) -> bool:
        return super().has_add_permission(request) and not PositionWeights.objects.exists()
