"""Who may call what.

API clients are checked against scopes the view declares in
``required_scopes`` ({"read": "leads:read", "write": "leads:write"}); staff
users on a session are checked against Django model permissions (view for
reads, add/change/delete for writes), so the admin roles apply to the API too.
A view lists in ``read_actions`` the POST actions that only read (a preview
takes a body but writes nothing): those are checked as reads.
"""
from __future__ import annotations

from rest_framework import permissions

from martech.models import ApiClient

_PERM_FOR_METHOD = {
    "GET": "view",
    "HEAD": "view",
    "OPTIONS": "view",
    "POST": "add",
    "PUT": "change",
    "PATCH": "change",
    "DELETE": "delete",
}


def _reads_only(view, method: str) -> bool:
    return method in permissions.SAFE_METHODS or getattr(view, "action", None) in getattr(view, "read_actions", ())


def required_scope(view, method: str) -> str | None:
    scopes = getattr(view, "required_scopes", None) or {}
    return scopes.get("read" if _reads_only(view, method) else "write")


class ScopedOrModelPermission(permissions.BasePermission):
    message = "You do not have permission to perform this action."

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, ApiClient):
            scope = required_scope(view, request.method)
            if scope is None or not request.auth.has_scope(scope):
                self.message = f"This API client lacks the scope {scope!r}." if scope else self.message
                return False
            return True
        user = request.user
        if not (user and user.is_authenticated and user.is_staff):
            return False
        queryset = getattr(view, "queryset", None)
        model = getattr(view, "permission_model", None) or (queryset.model if queryset is not None else None)
        if model is None:
            return user.is_superuser
        actions = ["view"] if _reads_only(view, request.method) else [_PERM_FOR_METHOD.get(request.method, "change")]
        # An upsert may create or change, so it needs both.
        if request.method == "POST" and getattr(view, "action", None) == "upsert":
            actions = ["add", "change"]
        opts = model._meta
        return all(user.has_perm(f"{opts.app_label}.{a}_{opts.model_name}") for a in actions)
