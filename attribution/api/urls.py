from django.urls import path, re_path

from attribution.api import views

urlpatterns = [
    re_path(r"^attribution/report/?$", views.ReportView.as_view(), name="attribution-report"),
    re_path(r"^attribution/compare/?$", views.CompareView.as_view(), name="attribution-compare"),
]
