from django.urls import path

from martech.privacy.api.views import ErasureView, ExportView

urlpatterns = [
    path("exports", ExportView.as_view(), name="privacy-export"),
    path("erasures", ErasureView.as_view(), name="privacy-erasure"),
]
