from django.apps import AppConfig


class CrmConfig(AppConfig):
    name = "martech.crm"
    label = "crm"
    verbose_name = "CRM sync"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the in-transaction outbox hooks (martech.hooks).
        from martech.crm import outbox  # noqa: F401
