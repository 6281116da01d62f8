from django.apps import AppConfig


class NurtureConfig(AppConfig):
    name = "nurture"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from martech import configcache
        from nurture import checks, receivers  # noqa: F401 (checks: registers the deploy checks)
        from nurture.models import VERSION_EVENTS_KEY, WORKFLOWS_KEY, Workflow, WorkflowVersion

        receivers.connect()
        # The receivers cache the active workflows; a save or delete invalidates them.
        configcache.watch(WORKFLOWS_KEY, Workflow, WorkflowVersion)
        configcache.watch(VERSION_EVENTS_KEY, WorkflowVersion)  # written once, by publish (a save)

        from martech import hooks
        from nurture import selectors

        # The lead 360 page's journeys and messages (martech offers the place).
        hooks.provide_lead_section(hooks.LeadSection(
            "journeys", "Journeys", 50, "admin/nurture/lead360_journeys.html",
            ("nurture.view_enrollment",), selectors.lead_journeys))
        hooks.provide_lead_section(hooks.LeadSection(
            "messages", "Messages", 60, "admin/nurture/lead360_messages.html",
            ("nurture.view_message",), selectors.lead_messages))
