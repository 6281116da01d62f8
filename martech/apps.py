import importlib
from collections.abc import Iterator
from types import ModuleType

from django.apps import AppConfig, apps


class MartechConfig(AppConfig):
    name = "martech"
    verbose_name = "Marketing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from martech import checks  # noqa: F401 (registers the deploy checks)
        from martech import configcache
        from martech.models import ChannelRule, EventType, Form, LifecycleStage, UtmAlias, Website
        from martech.services.campaigns import UTM_KEY
        from martech.services.ingest import CATALOG_KEY
        from martech.services.forms import FORMS_KEY
        from martech.services.leads import STAGES_KEY
        from martech.services.tracker import WEBSITES_KEY

        # Configuration read by every events batch and tracker request.
        configcache.watch(CATALOG_KEY, EventType)
        configcache.watch(UTM_KEY, UtmAlias, ChannelRule)
        configcache.watch(WEBSITES_KEY, Website)
        configcache.watch(STAGES_KEY, LifecycleStage)
        configcache.watch(FORMS_KEY, Form, EventType)

        # Every app's post_migrate, not only ours: permissions of apps listed
        # after martech are created in their own post_migrate.
        post_migrate.connect(_sync_roles_after_migrate, dispatch_uid="martech_sync_roles")

        from martech.taskqueue import task_cpu_tally_connect

        task_cpu_tally_connect()  # MARTECH_TASK_CPU_TALLY: CPU per task function, for the bench


def _sync_roles_after_migrate(sender, using, **kwargs) -> None:
    from django.apps import apps

    from martech.roles import sync_roles

    sync_roles(apps)


def app_modules(name: str) -> Iterator[ModuleType]:
    """Each installed app's ``<app>.<name>`` module (``schedules``, ``demo``),
    in INSTALLED_APPS order. An app without one is skipped; an import error
    raised inside a module that exists is not hidden."""
    for config in apps.get_app_configs():
        dotted = f"{config.name}.{name}"
        try:
            yield importlib.import_module(dotted)
        except ModuleNotFoundError as exc:
            if exc.name != dotted:
                raise
