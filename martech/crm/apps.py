from django.apps import AppConfig


class CrmConfig(AppConfig):
    name = "martech.crm"
    label = "crm"
    verbose_name = "CRM sync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The core object types (contact, company, task), and the outbox's
        # in-transaction hooks for every type registered (martech.hooks).
        from martech import configcache
        from martech.crm import checks, outbox, receivers  # noqa: F401 (checks: registers the deploy checks)
        from martech.crm.models import Connection, CrmOwner, FieldMapping, LifecycleMapping
        from martech.crm.services.payloads import BUILDER_KEY
        from martech.crm.types import register_core
        from martech.models import LifecycleStage

        # The outbox caches the push mappings, the drain what payloads are
        # built with; a save or delete invalidates them.
        configcache.watch(outbox.MAPPINGS_KEY, Connection, FieldMapping)
        configcache.watch(BUILDER_KEY, Connection, FieldMapping, LifecycleMapping, LifecycleStage, CrmOwner)

        register_core()
        # Segment mirrors (CRM lists): the "list" object type and the hooks that queue it.
        from martech.crm import lists

        lists.register()
        # A new touch on a campaign can add a member: queue the campaign.
        receivers.connect()

        from martech import hooks
        from martech.crm import selectors

        # The lead 360 page's CRM records and sync state (the core offers the place).
        hooks.provide_lead_section(hooks.LeadSection(
            "crm", "CRM records", 90, "admin/crm/lead360_crm.html", ("martech.view_lead",), selectors.lead_crm))
