from martech.api.rest_urls import OptionalSlashRouter
from nurture.api import views

router = OptionalSlashRouter()
router.register("workflows", views.WorkflowViewSet, basename="nurture-workflow")
urlpatterns = router.urls
