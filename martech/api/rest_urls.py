"""Routes of the REST API under /api/v1/.

The trailing slash is optional (``leads`` and ``leads/``): clients write
``POST /api/v1/leads/upsert`` without one, and APPEND_SLASH cannot redirect
a POST. ``GET /api/v1/events`` (no slash) is shared with capture's POST; see
martech/api/urls.py.
"""
from rest_framework.routers import SimpleRouter

from martech.api import views


class OptionalSlashRouter(SimpleRouter):
    def __init__(self):
        super().__init__()
        self.trailing_slash = "/?"


router = OptionalSlashRouter()
router.register("leads", views.LeadViewSet, basename="lead")
router.register("accounts", views.AccountViewSet, basename="account")
router.register("events", views.EventViewSet, basename="event")
router.register("lifecycle-stages", views.LifecycleStageViewSet, basename="lifecycle-stage")
router.register("campaigns", views.CampaignViewSet, basename="campaign")

urlpatterns = router.urls
