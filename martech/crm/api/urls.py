from django.urls import path

from martech.crm.api.views import HubSpotWebhookView

urlpatterns = [
    path("webhooks/hubspot", HubSpotWebhookView.as_view(), name="crm-webhook-hubspot"),
]
