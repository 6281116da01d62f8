import datetime as dt
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from martech.crm.models import FieldMapping
from martech.crm.transforms import TransformError, to_local, to_remote

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("kind,local,remote", [
    ("text", "Ann", "Ann"),
    ("number", Decimal("12.50"), "12.5"),
    ("number", 3, "3"),
    ("boolean", True, "true"),
    ("boolean", False, "false"),
    ("date", dt.date(2026, 3, 1), "2026-03-01"),
    ("datetime", dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone.utc), "2026-03-01T12:30:00Z"),
    ("multi", ["a", "b c"], "a;b c"),
])
def test_round_trip(kind, local, remote):
    assert to_remote(kind, local) == remote
    back = to_local(kind, remote)
    assert back == (local if kind != "number" else Decimal(remote))


def test_picklist_value_map_both_ways_and_unknown():
    vmap = {"enterprise": "ENT", "smb": "SMB"}
    assert to_remote("picklist", "smb", vmap) == "SMB"
    assert to_local("picklist", "ENT", vmap) == "enterprise"
    with pytest.raises(TransformError, match="no picklist value"):
        to_remote("picklist", "mid", vmap)
    with pytest.raises(TransformError):
        to_local("picklist", "MID", vmap)


def test_hubspot_epoch_millis_and_bad_input():
    assert to_local("date", "1772323200000") == dt.date(2026, 3, 1)
    assert to_local("datetime", "2026-03-01T12:30:00.000Z") == dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone.utc)
    assert to_local("boolean", "Yes") is True
    for kind, raw in [("number", "x"), ("boolean", "perhaps"), ("date", "soon"), ("datetime", "later")]:
        with pytest.raises(TransformError):
            to_local(kind, raw)
    assert to_remote("text", None) == "" and to_local("text", "") is None


@pytest.mark.parametrize("fields,bad", [
    ({"local_field": "nope"}, "local_field"),
    ({"local_field": "properties."}, "local_field"),
    ({"remote_field": ""}, "remote_field"),
    ({"kind": "picklist"}, "value_map"),
    ({"kind": "picklist", "value_map": {"a": "X", "b": "X"}}, "value_map"),
    ({"value_map": {"a": "b"}}, "value_map"),
    ({"kind": "number", "default": "lots"}, "default"),
])
def test_invalid_mapping_refused_naming_the_field(connection, fields, bad):
    mapping = FieldMapping(connection=connection, **{"local_field": "job_title", "remote_field": "x_title", **fields})
    with pytest.raises(ValidationError) as exc:
        mapping.full_clean()
    assert bad in exc.value.message_dict


def test_valid_custom_property_mapping(connection):
    FieldMapping(connection=connection, local_field="properties.plan", remote_field="plan", kind="picklist",
                 value_map={"pro": "PRO"}).full_clean()
