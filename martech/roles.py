"""The staff roles (docs/admin.md, Roles), as Django groups.

Permissions are given per app and action, so models that later issues add to
an app join the roles without another list to keep. ``sync_roles`` runs from
a data migration (so a fresh database has the groups) and after every
``migrate`` (so new models' permissions are added).
"""
from __future__ import annotations

ALL = ("add", "change", "delete", "view")
VIEW = ("view",)

# group -> app label -> actions allowed on every model of that app
ROLES: dict[str, dict[str, tuple[str, ...]]] = {
    "Marketing Ops": {
        "martech": ALL,
        "scoring": ALL,
        "nurture": ALL,
        "attribution": ALL,
        "routing": VIEW,
        "django_q": VIEW,
        "crm": ALL,
    },
    "Sales Ops": {
        "routing": ALL,
        "martech": VIEW,
        "scoring": VIEW,
        "attribution": VIEW,
        "crm": VIEW,
    },
    "Analyst": {
        "martech": VIEW,
        "scoring": VIEW,
        "routing": VIEW,
        "nurture": VIEW,
        "attribution": VIEW,
        "django_q": VIEW,
        "crm": VIEW,
    },
    # Data protection staff: answer subject access and erasure requests. They
    # find the person among the leads (read only) and act through the
    # privacy app's services; what was done is listed in the Privacy area.
    "Privacy": {
        "privacy": ("view", "export", "erase"),
        "martech": VIEW,
    },
}

# The routing admins: told of SLA breaches when neither the rep's manager nor
# the team's escalation contact exists (routing.services.escalation_recipients).
ROUTING_ADMINS = "Sales Ops"

# Sensitive models no role gets beyond viewing, whatever the app rule says:
# API clients carry credentials; their tokens are made by a command.
RESTRICTED = {("martech", "apiclient"): VIEW}


def sync_roles(apps) -> None:
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for group_name, rules in ROLES.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        wanted = []
        for perm in Permission.objects.select_related("content_type").filter(content_type__app_label__in=rules):
            ct = perm.content_type
            action = perm.codename.split("_", 1)[0]
            allowed = rules[ct.app_label]
            allowed = tuple(a for a in allowed if a in RESTRICTED.get((ct.app_label, ct.model), allowed))
            if action in allowed:
                wanted.append(perm)
        group.permissions.set(wanted)
