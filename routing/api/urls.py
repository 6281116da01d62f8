from martech.api.rest_urls import OptionalSlashRouter
from routing.api import views

router = OptionalSlashRouter()
router.register("teams", views.TeamViewSet, basename="routing-team")
router.register("reps", views.RepViewSet, basename="routing-rep")
router.register("territories", views.TerritoryViewSet, basename="routing-territory")
router.register("rule-sets", views.RuleSetViewSet, basename="routing-rule-set")
router.register("assignments", views.AssignmentViewSet, basename="routing-assignment")
router.register("absences", views.AbsenceViewSet, basename="routing-absence")
router.register("leads", views.LeadRoutingViewSet, basename="routing-lead")
router.register("", views.RoutingViewSet, basename="routing")

urlpatterns = router.urls
