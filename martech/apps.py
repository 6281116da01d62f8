from django.apps import AppConfig


class MartechConfig(AppConfig):
    name = "martech"
    verbose_name = "Marketing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        # Every app's post_migrate, not only ours: permissions of apps listed
        # after martech are created in their own post_migrate.
        post_migrate.connect(_sync_roles_after_migrate, dispatch_uid="martech_sync_roles")


def _sync_roles_after_migrate(sender, using, **kwargs) -> None:
    from django.apps import apps

    from martech.roles import sync_roles

    sync_roles(apps)
