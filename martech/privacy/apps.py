from django.apps import AppConfig


class PrivacyConfig(AppConfig):
    name = "martech.privacy"
    label = "privacy"
    verbose_name = "Privacy"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The core asks "was this person erased?" through a provider (martech
        # never imports this app); the CRM delete of an erasure is an object
        # type of the CRM outbox (pushed by martech.privacy.crm).
        from martech import configcache, hooks
        from martech.privacy import crm, tombstones
        from martech.privacy.models import Tombstone

        hooks.provide("erased_keys", tombstones.erased_keys)
        configcache.watch(tombstones.TOMBSTONES_KEY, Tombstone)
        crm.register()
