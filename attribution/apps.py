from django.apps import AppConfig


class AttributionConfig(AppConfig):
    name = "attribution"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from attribution import receivers
        from martech import signals

        signals.events_ingested.connect(receivers.on_events_ingested, dispatch_uid="attribution_events_ingested")
        signals.opportunity_changed.connect(receivers.on_opportunity_changed, dispatch_uid="attribution_opportunity_changed")
        # Opportunities sync as CRM deals (martech.crm's object registry).
        from attribution.crm_sync import register_deal

        register_deal()
