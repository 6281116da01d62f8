from django.urls import re_path

from attribution.api import views
from martech.api.rest_urls import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("opportunities", views.OpportunityViewSet, basename="opportunity")
router.register("attribution/spend", views.SpendViewSet, basename="attribution-spend")

urlpatterns = [
    re_path(r"^attribution/report/?$", views.ReportView.as_view(), name="attribution-report"),
    re_path(r"^attribution/compare/?$", views.CompareView.as_view(), name="attribution-compare"),
    re_path(r"^attribution/pipeline/?$", views.PipelineView.as_view(), name="attribution-pipeline"),
    re_path(r"^attribution/forecast/?$", views.ForecastView.as_view(), name="attribution-forecast"),
    re_path(r"^attribution/forecast/accuracy/?$", views.ForecastAccuracyView.as_view(), name="attribution-forecast-accuracy"),
    re_path(r"^speed-to-lead/?$", views.SpeedToLeadView.as_view(), name="speed-to-lead"),
    # Before the routers' detail routes, which would read "import" as an id.
    re_path(r"^attribution/spend/import/?$", views.SpendImportView.as_view(), name="attribution-spend-import"),
    re_path(r"^opportunities/import/?$", views.OpportunityImportView.as_view(), name="opportunities-import"),
    *router.urls,
]
