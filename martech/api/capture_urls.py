from django.urls import path

from martech.api import capture

urlpatterns = [
    path("events", capture.EventBatchView.as_view(), name="api-events"),
    path("capture/<slug:form_key>", capture.FormCaptureView.as_view(), name="api-form-capture"),
]
