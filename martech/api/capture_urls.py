from django.urls import path

from martech.api import capture, tracker

urlpatterns = [
    path("events", capture.EventBatchView.as_view(), name="api-events"),
    path("capture/<slug:form_key>", capture.FormCaptureView.as_view(), name="api-form-capture"),
    path("t", tracker.TrackerBatchView.as_view(), name="api-tracker"),
]
