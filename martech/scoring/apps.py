from django.apps import AppConfig


class ScoringConfig(AppConfig):
    name = "martech.scoring"
    label = "scoring"
    verbose_name = "Scoring, segments and lifecycle"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the in-transaction lead hook and the after-commit signal
        # receivers (rescoring, lifecycle rules, SQL handoff). No threads.
        from martech import configcache
        from martech.scoring import receivers  # noqa: F401
        from martech.models import LifecycleStage
        from martech.scoring.models import EngagementRule, FitRule, LifecycleRule, ScoringModel
        from martech.scoring.services import LIFECYCLE_KEY, RULES_KEY

        # Workers cache the parsed rules; any save or delete invalidates them.
        configcache.watch(RULES_KEY, ScoringModel, FitRule, EngagementRule)
        configcache.watch(LIFECYCLE_KEY, LifecycleRule, LifecycleStage)
