"""The OpenAPI check used by the emulator fixture does catch wrong shapes,
and the demo data is idempotent."""
import json

import jsonschema
import pytest

from martech.crm.demo import demo_seed
from martech.crm.models import Connection, FieldMapping, LifecycleMapping
from tests.crm.conftest import SpecCheck


def test_spec_check_rejects_wrong_request_and_response():
    spec = SpecCheck()
    good = json.dumps({"inputs": [{"id": "a@example.org", "idProperty": "email", "properties": {"x": "1"}}]})
    spec.check("POST", "/crm/v3/objects/contacts/batch/upsert", good.encode(), 400, b"")
    with pytest.raises(jsonschema.ValidationError):
        spec.check("POST", "/crm/v3/objects/contacts/batch/upsert", b'{"inputs": [{"properties": {}}]}', 400, b"")
    with pytest.raises(jsonschema.ValidationError):  # a 200 answer without the required fields
        spec.check("POST", "/crm/v3/objects/contacts/batch/upsert", good.encode(), 200, b'{"results": []}')
    with pytest.raises(AssertionError):
        spec.check("POST", "/crm/v3/objects/contacts/nope/nope", b"{}", 200, b"{}")


@pytest.mark.django_db
def test_demo_seed_is_idempotent():
    first = demo_seed(progress=False)
    assert first["crm connections"] == 2 and first["crm field mappings"] > 10
    again = demo_seed(progress=False)
    assert set(again.values()) == {0}
    assert set(Connection.objects.values_list("provider", flat=True)) == {"hubspot", "salesforce"}
    for mapping in FieldMapping.objects.all():
        mapping.full_clean()  # the defaults pass the admin's validation


def test_spec_check_knows_the_v4_archive_shape():
    spec = SpecCheck()
    path = "/crm/v4/associations/deals/companies/batch/archive"
    good = json.dumps({"inputs": [{"from": {"id": "1"}, "to": [{"id": "2"}]}]}).encode()
    spec.check("POST", path, good, 204, b"")
    with pytest.raises(jsonschema.ValidationError):  # "to" is a list in v4 archive, not one id
        spec.check("POST", path, b'{"inputs": [{"from": {"id": "1"}, "to": {"id": "2"}}]}', 204, b"")
    with pytest.raises(AssertionError):  # HubSpot answers 204 with no body
        spec.check("POST", path, good, 200, b'{"status": "COMPLETE"}')


@pytest.mark.django_db
def test_demo_seed_leaves_what_ops_deleted_deleted():
    demo_seed(progress=False)
    mapping = FieldMapping.objects.order_by("pk").first()
    value = LifecycleMapping.objects.order_by("pk").first()
    mapping.delete()
    value.delete()
    assert set(demo_seed(progress=False).values()) == {0}
    assert not FieldMapping.objects.filter(connection=mapping.connection, object=mapping.object,
                                           remote_field=mapping.remote_field).exists()
    assert not LifecycleMapping.objects.filter(connection=value.connection, remote_value=value.remote_value).exists()
