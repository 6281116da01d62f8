from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from martech import hosted, views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("martech.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("healthz", views.healthz, name="healthz"),
    path("n/", include("nurture.urls")),  # nurture: tracking and unsubscribe links in emails
    path("anymail/", include("nurture.esp_webhooks")),  # the ESPs' delivery, bounce and complaint webhooks
    path("f/<slug:form_key>", hosted.form_page, name="form-page"),  # hosted capture forms
    path("f/<slug:form_key>/thanks", hosted.form_thanks, name="form-thanks"),
    path("consent/confirm/<str:token>", views.consent_confirm, name="consent-confirm"),  # double opt-in links
]

handler404 = "martech.api.errors.not_found"
handler500 = "martech.api.errors.server_error"
