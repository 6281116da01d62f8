from django.apps import AppConfig


class AttributionConfig(AppConfig):
    name = "attribution"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from attribution import receivers
        from martech import signals

        signals.events_ingested.connect(receivers.on_events_ingested, dispatch_uid="attribution_events_ingested")
        signals.lead_merged.connect(receivers.on_lead_merged, dispatch_uid="attribution_lead_merged")
        # Opportunity changes queue their recompute in attribution.services (once per transaction), not here.
        # Opportunities sync as CRM deals (martech.crm's object registry).
        from attribution.crm_sync import register_deal

        register_deal()

        from attribution import selectors
        from martech import hooks

        # The lead 360 page's opportunities with the lead's credit (martech offers the place).
        hooks.provide_lead_section(hooks.LeadSection(
            "opportunities", "Opportunities and credit", 80, "admin/attribution/lead360_opportunities.html",
            ("attribution.view_opportunity",), selectors.lead_opportunities))
