from martech.api.rest_urls import OptionalSlashRouter
from nurture.api import views

router = OptionalSlashRouter()
router.register("workflows", views.WorkflowViewSet, basename="nurture-workflow")
router.register("email-templates", views.EmailTemplateViewSet, basename="nurture-email-template")
urlpatterns = router.urls
