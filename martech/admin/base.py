"""What every martech ops screen shares (docs/style.md, 7-9).

- ``ServiceSaveMixin``: admins whose ``save_model`` calls a service. A
  ``ValidationError`` the form could not foresee (a race, a rule only the
  service knows) rolls the whole admin transaction back and comes back to the
  same page as an error message, instead of a 500 or a false "saved".
- ``BigTableAdmin``: the changelist never counts a whole big table.
- ``ReadOnlyAdmin``: history tables written only by services.
- ``ConflictRetryAdminMixin`` (in ``BaseAdmin``): a save, delete or action
  whose transaction the database aborted for a concurrent one (deadlock,
  serialization failure) runs again instead of answering 500 (``martech.db``).
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponseRedirect
from simple_history.admin import SimpleHistoryAdmin

from martech.db import retry_on_conflict
from martech.paginator import EstimatedCountPaginator

_FAILED = "_martech_service_failed"


def validation_messages(exc: ValidationError) -> list[str]:
    """``"field: message"`` lines for a service's ValidationError."""
    if hasattr(exc, "error_dict"):
        return [
            f"{field}: {msg}" if field != "__all__" else msg
            for field, msgs in exc.message_dict.items()
            for msg in msgs
        ]
    return list(exc.messages)


def denied(request: HttpRequest, message: str, to: str) -> HttpResponseRedirect:
    """Send a user who may not use a page back to ``to`` with ``message``
    (what they cannot do and which permission it takes) shown as an error,
    instead of a silent redirect that looks like a broken link."""
    messages.error(request, message)
    return HttpResponseRedirect(to)


def add_errors_to_form(form, exc: ValidationError) -> None:
    """Put a service's ValidationError on the form's fields where it names
    one the form has, else on the form itself."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, msgs in exc.message_dict.items():
        if field in form.fields:
            form.add_error(field, msgs)
        else:
            form.add_error(None, [m if field == "__all__" else f"{field}: {m}" for m in msgs])


class ServiceSaveMixin:
    """For admins whose writes go through a service (docs/style.md, 7)."""

    def call_service(self, request: HttpRequest, fn, /, **kwargs):
        """Run ``fn(**kwargs)``; on ValidationError roll the admin's
        transaction back, show the error and return None."""
        try:
            with transaction.atomic():
                return fn(**kwargs)
        except ValidationError as exc:
            transaction.set_rollback(True)
            setattr(request, _FAILED, True)
            for line in validation_messages(exc):
                self.message_user(request, line, messages.ERROR)
            return None

    def _back_if_failed(self, request: HttpRequest):
        if getattr(request, _FAILED, False):
            # Django's "was added/changed successfully" message is written by
            # response_add/response_change, which we skip: only the error shows.
            return HttpResponseRedirect(request.get_full_path())
        return None

    def log_addition(self, request, obj, message):
        if getattr(request, _FAILED, False):
            return None
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        if getattr(request, _FAILED, False):
            return None
        return super().log_change(request, obj, message)

    def save_related(self, request, form, formsets, change):
        if getattr(request, _FAILED, False):
            return
        super().save_related(request, form, formsets, change)

    def construct_change_message(self, request, form, formsets, add=False):
        if getattr(request, _FAILED, False):
            return []  # nothing was saved (the formsets were not even run)
        return super().construct_change_message(request, form, formsets, add)

    def response_add(self, request, obj, post_url_continue=None):
        return self._back_if_failed(request) or super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        return self._back_if_failed(request) or super().response_change(request, obj)


class ConflictRetryAdminMixin:
    """The admin's write views are its transaction boundaries: Django runs
    the add/change form and the delete page each in one ``atomic`` block
    (actions in their own), and the POST body is parsed once and kept, so
    running the view again after an aborted transaction repeats the same
    submission on fresh rows."""

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        view = super().changeform_view
        if request.method != "POST":
            return view(request, object_id, form_url, extra_context)
        return retry_on_conflict(view)(request, object_id, form_url, extra_context)

    def delete_view(self, request, object_id, extra_context=None):
        view = super().delete_view
        if request.method != "POST":
            return view(request, object_id, extra_context)
        return retry_on_conflict(view)(request, object_id, extra_context)

    def changelist_view(self, request, extra_context=None):
        view = super().changelist_view
        if request.method != "POST":
            return view(request, extra_context)
        return retry_on_conflict(view)(request, extra_context)


class BaseAdmin(ConflictRetryAdminMixin, admin.ModelAdmin):
    """Defaults for every martech screen."""

    list_per_page = 50
    list_max_show_all = 500
    save_on_top = False


class BigTableChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        first = getattr(self.paginator, "_first_page", None)
        if first is not None and not self.multi_page:
            # The paginator read every matching row while counting them (a
            # search with one page of results): show those, not a second scan.
            self.result_list = first


class BigTableAdmin(BaseAdmin):
    """Leads, events, stage history, consent, quarantine: millions of rows.
    No full count (Django's "N total" link) and an estimating paginator."""

    show_full_result_count = False
    paginator = EstimatedCountPaginator
    # Django's "Show counts" runs a COUNT per filter choice over the table.
    show_facets = admin.ShowFacets.NEVER

    def get_changelist(self, request, **kwargs):
        return BigTableChangeList


class ReadOnlyMixin:
    """Rows written only by services: visible, never added, edited or deleted here."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class HistoryAdmin(SimpleHistoryAdmin, BaseAdmin):
    """Configuration tables: every change kept by django-simple-history
    (who, when, before/after) and shown under "History"."""
