from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Lead routing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from martech import hooks
        from routing import receivers, services

        receivers.connect()
        hooks.provide("assign_owner", services.assign_owner_provider)
        hooks.provide("crm_owner_id", services.crm_owner_id_provider)
        # The CRM sync reaches reps only through these (martech never imports routing).
        hooks.provide("crm_user_owner_id", services.crm_user_owner_id_provider)
        hooks.provide("crm_owner_user_id", services.crm_owner_user_id_provider)
        hooks.provide("crm_owners_pulled", services.crm_owners_pulled_provider)
