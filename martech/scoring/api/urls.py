"""Mounted under /api/v1/scoring/ by martech/api/urls.py."""
from martech.api.rest_urls import OptionalSlashRouter
from martech.scoring.api import views

router = OptionalSlashRouter()
router.register("segments", views.SegmentViewSet, basename="segment")
router.register("scores", views.ScoreViewSet, basename="score")

urlpatterns = router.urls
