"""The object registry: core types, queueing through martech.hooks in the
writing transaction, mappings validated against the registered model."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from martech import hooks
from martech.crm import objects
from martech.crm.connectors.hubspot import HubSpotConnector
from martech.crm.models import FieldMapping, OutboxItem
from martech.services.accounts import account_upsert
from martech.services.leads import lead_upsert
from martech.services.tasks import task_complete, task_create

pytestmark = pytest.mark.django_db


def test_core_types_are_registered_and_hubspot_declares_them():
    keys = {o.key for o in objects.all_types()}
    assert {"contact", "company", "task", "deal"} <= keys  # deal comes from attribution's AppConfig
    assert objects.get("company").model_class.__name__ == "Account"
    assert objects.get("deal").model_class._meta.label == "attribution.Opportunity"
    synced = [o.key for o in objects.synced_by(HubSpotConnector.__new__(HubSpotConnector))]
    assert synced[:2] == ["company", "contact"]  # associated types push first
    with pytest.raises(LookupError, match="No CRM object type 'nope'"):
        objects.get("nope")


def test_account_write_queues_company_push_in_its_transaction(connection):
    FieldMapping.objects.create(connection=connection, object="company", local_field="name", remote_field="name")
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            account_upsert(data={"name": "Acme", "domain": "acme.com"}, source="test")
            assert OutboxItem.objects.filter(object="company").count() == 1
            raise RuntimeError("roll back")
    assert not OutboxItem.objects.exists()
    account, _ = account_upsert(data={"name": "Acme", "domain": "acme.com"}, source="test")
    item = OutboxItem.objects.get()
    assert (item.object, item.local_id) == ("company", account.pk)
    OutboxItem.objects.all().delete()
    account_upsert(data={"industry": "Retail"}, account=account, source="test")  # industry is not mapped
    assert not OutboxItem.objects.exists()
    account_upsert(data={"name": "Acme Inc"}, account=account, source="crm:hubspot")  # pulled: no echo
    assert not OutboxItem.objects.exists()


def test_task_create_and_complete_queue_task_push(connection):
    FieldMapping.objects.create(connection=connection, object="task", local_field="subject",
                                remote_field="hs_task_subject", direction="push")
    FieldMapping.objects.create(connection=connection, object="task", local_field="status",
                                remote_field="hs_task_status", kind="picklist",
                                value_map={"open": "NOT_STARTED", "done": "COMPLETED", "cancelled": "DEFERRED"})
    lead, _ = lead_upsert(data={"email": "t@example.org"}, source="test")
    task, _ = task_create(key="k1", lead=lead, subject="Call", source="test")
    assert OutboxItem.objects.filter(object="task", local_id=task.pk, status="pending").count() == 1
    OutboxItem.objects.filter(object="task").update(status="done")
    task_complete(task=task, source="test")
    assert OutboxItem.objects.filter(object="task", local_id=task.pk, status="pending").count() == 1


def test_mapping_on_unknown_object_or_field_is_refused_by_name(connection):
    bad = FieldMapping(connection=connection, object="nope", local_field="name", remote_field="x")
    with pytest.raises(ValidationError) as exc:
        bad.full_clean()
    assert "object" in exc.value.message_dict
    bad = FieldMapping(connection=connection, object="company", local_field="email", remote_field="x")
    with pytest.raises(ValidationError) as exc:
        bad.full_clean()
    assert exc.value.message_dict["local_field"] == ["Account has no field 'email'."]


def test_records_changed_reaches_hooks_of_any_kind():
    seen = []

    def hook(*, ids, fields, created, source):
        seen.append((ids, fields, created, source))

    hooks.on_records_changed("widgets", hook)
    hooks.on_records_changed("widgets", hook)  # registered once
    try:
        hooks.records_changed("widgets", ids=[1, None, 2], fields=["a"], created=True, source="s")
        hooks.records_changed("nobody-listens", ids=[1], fields=["a"])
    finally:
        hooks._kind_hooks.pop("widgets")
    assert seen == [([1, 2], frozenset({"a"}), True, "s")]


def test_custom_property_mapping_refused_for_a_model_without_properties(connection):
    bad = FieldMapping(connection=connection, object="company", local_field="properties.tier", remote_field="tier")
    with pytest.raises(ValidationError) as exc:
        bad.full_clean()
    assert exc.value.message_dict["local_field"] == ["Account has no custom properties."]
    FieldMapping(connection=connection, object="contact", local_field="properties.tier",
                 remote_field="tier").full_clean()


def test_scheduled_pull_records_an_owners_failure_and_still_pulls(company_mappings, hubspot):
    from martech.crm.tasks import pull_all
    from martech.models import Account

    original = hubspot.dispatch

    def owners_down(request):
        if request.path.startswith("/crm/v3/owners"):
            return hubspot.error(403, "MISSING_SCOPES", "owners scope missing")
        return original(request)

    hubspot.dispatch = owners_down
    hubspot.put("companies", {"domain": "still.io", "name": "Still"})
    out = pull_all()
    assert out["hubspot:owners"] == -1 and out["hubspot:company"] == 1
    company_mappings.refresh_from_db()
    assert "owners pull" in company_mappings.last_error and "403" in company_mappings.last_error
    assert not company_mappings.stopped_reason
    assert Account.objects.filter(domain="still.io").exists()
