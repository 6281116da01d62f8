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
