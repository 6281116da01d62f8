"""The ops console's admin site: Django's, plus a "Dashboards" section at
the top of the index and the navigation sidebar (pages that are not a
model's list: the attribution dashboard, the SLA report) for the users
allowed to open them, and a "View site" link that leads somewhere.

Installed as the default site through ``OpsAdminConfig`` (settings'
INSTALLED_APPS), so every ``admin.site.register`` and ``admin.site.urls``
in the project uses it unchanged."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.urls import NoReverseMatch, path, reverse


@dataclass(frozen=True)
class Dashboard:
    name: str
    url_name: str
    permission: str  # "app_label.codename" the page itself checks


# The permission is the one the view checks (its model admin's view
# permission), so the link shows exactly to those the page lets in.
DASHBOARDS = (
    Dashboard("Attribution dashboard", "admin:attribution_dashboard", "attribution.view_attributioncredit"),
    Dashboard("Routing SLA report", "admin:routing_sla_report", "routing.view_assignment"),
    Dashboard("Speed to lead", "admin:speed_to_lead", "routing.view_assignment"),
)
DASHBOARDS_LABEL = "dashboards"


@dataclass(frozen=True)
class Page:
    route: str
    view: Callable
    name: str


# Pages that belong to no one model's admin (a report reading several apps'
# records), added by the app that owns them from its admin module; served
# under /admin/<route> behind the admin's login (each view checks its own
# permission).
PAGES: list[Page] = []


def register_page(route: str, view: Callable, name: str) -> None:
    if all(p.name != name for p in PAGES):
        PAGES.append(Page(route, view, name))


class OpsAdminSite(admin.AdminSite):
    site_header = "Martech ops console"
    site_title = "Martech ops console"
    index_title = "Marketing operations"
    # "View site" pointed at "/", which this site does not serve (a 404).
    # The API documentation is the site's public face for the people who
    # use the console (the hosted forms have no list page).
    site_url = "/api/docs/"

    def dashboards(self, request) -> list[dict]:
        """The dashboards ``request.user`` may open, as app-list entries."""
        out = []
        for d in DASHBOARDS:
            if not request.user.has_perm(d.permission):
                continue
            try:
                url = reverse(d.url_name, current_app=self.name)
            except NoReverseMatch:  # its app is not installed
                continue
            out.append({"name": d.name, "object_name": d.url_name.rpartition(":")[2], "admin_url": url,
                        "add_url": None, "view_only": True, "perms": {"view": True}})
        return out

    def get_urls(self):
        return [path(p.route, self.admin_view(p.view), name=p.name) for p in PAGES] + super().get_urls()

    def get_app_list(self, request, app_label=None):
        app_list = super().get_app_list(request, app_label)
        if app_label is None:
            models = self.dashboards(request)
            if models:
                app_list.insert(0, {"name": "Dashboards", "app_label": DASHBOARDS_LABEL,
                                    "app_url": models[0]["admin_url"], "has_module_perms": True, "models": models})
        return app_list


class OpsAdminConfig(AdminConfig):
    default_site = "martech.adminsite.OpsAdminSite"
