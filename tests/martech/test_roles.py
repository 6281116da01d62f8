"""The staff roles (docs/admin.md, Roles) as Django groups (migration 0002 +
martech/roles.py, re-synced after every migrate)."""
import pytest
from django.contrib.auth.models import Group, Permission

from martech.roles import ROLES

pytestmark = pytest.mark.django_db

ROLE_NAMES = {"Marketing Ops", "Sales Ops", "Analyst", "Privacy"}


def _codenames(group_name: str) -> set[str]:
    return set(
        Group.objects.get(name=group_name)
        .permissions.values_list("content_type__app_label", "codename")
        .iterator()
    )


def test_groups_exist_after_migrate():
    assert ROLE_NAMES <= set(Group.objects.values_list("name", flat=True))
    assert set(ROLES) == ROLE_NAMES
    for name in ROLE_NAMES:
        assert Group.objects.get(name=name).permissions.exists()


def test_analyst_can_only_view(analyst):
    perms = _codenames("Analyst")
    assert perms, "Analyst should see things"
    assert all(codename.startswith("view_") for _, codename in perms)
    for perm in Permission.objects.exclude(codename__startswith="view_").select_related("content_type"):
        assert not analyst.has_perm(f"{perm.content_type.app_label}.{perm.codename}"), perm.codename
    for model in ("lead", "account", "event", "campaign", "stagetransition", "consentrecord"):
        assert analyst.has_perm(f"martech.view_{model}")


def test_sales_ops_reads_leads_but_cannot_touch_campaigns_or_events(sales_ops):
    assert sales_ops.has_perm("martech.view_lead")
    assert sales_ops.has_perm("martech.view_campaign")
    for action in ("add", "change", "delete"):
        for model in ("campaign", "event", "lead"):
            assert not sales_ops.has_perm(f"martech.{action}_{model}"), f"{action}_{model}"
    routing = Permission.objects.filter(content_type__app_label="routing")
    for perm in routing:  # sales ops own routing, whatever models it has
        assert sales_ops.has_perm(f"routing.{perm.codename}")


def test_marketing_ops_edit_leads_and_campaigns(marketing_ops):
    for perm in ("add_lead", "change_lead", "view_lead", "add_campaign", "change_campaign", "delete_campaign",
                 "change_event", "change_eventtype", "change_form", "change_utmalias", "change_channelrule"):
        assert marketing_ops.has_perm(f"martech.{perm}"), perm
    # They read routing (sales ops own it).
    for perm in Permission.objects.filter(content_type__app_label="routing").exclude(codename__startswith="view_"):
        assert not marketing_ops.has_perm(f"routing.{perm.codename}")


def test_only_superusers_manage_api_clients(marketing_ops, sales_ops, analyst, superuser):
    for user in (marketing_ops, sales_ops, analyst):
        for action in ("add", "change", "delete"):
            assert not user.has_perm(f"martech.{action}_apiclient"), (user.username, action)
    for name in ROLE_NAMES:
        assert not {c for _, c in _codenames(name)} & {"add_apiclient", "change_apiclient", "delete_apiclient"}
    assert superuser.has_perm("martech.add_apiclient") and superuser.has_perm("martech.change_apiclient")


def test_resync_is_idempotent():
    from django.apps import apps

    from martech.roles import sync_roles

    before = {name: _codenames(name) for name in ROLE_NAMES}
    sync_roles(apps)
    assert {name: _codenames(name) for name in ROLE_NAMES} == before


def test_only_the_privacy_role_exports_and_erases_people():
    perms = _codenames("Privacy")
    assert {("privacy", "export_subject"), ("privacy", "erase_subject"), ("privacy", "view_privacyrequest"),
            ("martech", "view_lead")} <= perms
    # It reads leads to find the person; it changes nothing else.
    assert not {c for app, c in perms if app == "martech" and not c.startswith("view_")}
    for other in ("Marketing Ops", "Sales Ops", "Analyst"):
        assert not {c for app, c in _codenames(other) if app == "privacy"}, other
