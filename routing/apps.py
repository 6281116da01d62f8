from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_delete


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Lead routing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from martech import configcache, hooks
        from routing import receivers, selectors, services
        from routing.models import OutOfOffice, Rep, SlaPolicy, Team, Territory

        receivers.connect()
        # What routes keep per process (the published rules with their
        # territory, team and rep rows): a save or delete of any of these
        # gives it a new token in the same transaction (routing.services,
        # CONFIG_KEY). Published rule sets never change (the live one's id
        # is read per route), and the draft editing that does not touch
        # routes bumps nothing.
        configcache.watch(services.CONFIG_KEY, Rep, Team, Territory, OutOfOffice, SlaPolicy)
        # A deleted user leaves their rep without one (SET_NULL is an
        # update, which sends no save signal); a user's other saves (every
        # login) change nothing routes read.
        post_delete.connect(lambda sender, **kwargs: services.config_changed(), sender=settings.AUTH_USER_MODEL,
                            weak=False, dispatch_uid="routing_config_user_deleted")
        hooks.provide("assign_owner", services.assign_owner_provider)
        hooks.provide("crm_owner_id", services.crm_owner_id_provider)
        hooks.provide("crm_owner_ids", services.crm_owner_ids_provider)
        # The CRM sync reaches reps only through these (martech never imports routing).
        hooks.provide("crm_user_owner_id", services.crm_user_owner_id_provider)
        hooks.provide("crm_owner_user_id", services.crm_owner_user_id_provider)
        hooks.provide("crm_owners_pulled", services.crm_owners_pulled_provider)
        # The lead list's owner column and the lead 360 page (martech offers both places).
        hooks.provide("lead_list_annotations", selectors.lead_list_annotations)
        hooks.provide_lead_section(hooks.LeadSection(
            "routing", "Owner and routing", 10, "admin/routing/lead360_routing.html",
            ("routing.view_assignment",), selectors.lead_routing))
