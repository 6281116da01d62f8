from django.urls import include, path

urlpatterns = [
    path("", include("martech.api.capture_urls")),
    path("", include("martech.api.rest_urls")),
]
