"""Type conversion between a local value and the CRM's string form.

HubSpot and Salesforce both speak strings for properties in our payloads;
each mapping kind converts both ways. ``validate_mapping`` is what the admin
(``FieldMapping.clean``) runs, so an invalid mapping is refused naming the field.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

TRUE = {"true", "1", "yes", "y", "on"}
FALSE = {"false", "0", "no", "n", "off", ""}


class TransformError(ValueError):
    pass


def to_remote(kind: str, value: Any, value_map: dict | None = None) -> str:
    """Local value -> CRM string; '' for empty."""
    if value is None or value == "" or value == []:
        return ""
    if kind == "number":
        return format(Decimal(str(value)).normalize(), "f")
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "date":
        if isinstance(value, dt.datetime):  # a date-time field mapped to a CRM date: its UTC day
            value = value.astimezone(dt.timezone.utc).date()
        return value.isoformat() if isinstance(value, dt.date) else str(value)
    if kind == "datetime":
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        return str(value)
    if kind == "picklist":
        value_map = value_map or {}
        if str(value) not in value_map:
            raise TransformError(f"no picklist value for {value!r}")
        return str(value_map[str(value)])
    if kind == "multi":
        items = value if isinstance(value, (list, tuple)) else [value]
        return ";".join(str(v) for v in items)
    return str(value)


def to_local(kind: str, raw: str | None, value_map: dict | None = None) -> Any:
    """CRM string -> local value; None for empty."""
    if raw is None or raw == "":
        return None
    raw = str(raw)
    if kind == "number":
        try:
            return Decimal(raw)
        except InvalidOperation:
            raise TransformError(f"not a number: {raw!r}") from None
    if kind == "boolean":
        low = raw.strip().lower()
        if low in TRUE:
            return True
        if low in FALSE:
            return False
        raise TransformError(f"not a boolean: {raw!r}")
    if kind == "date":
        # HubSpot date properties may come as midnight-UTC epoch milliseconds.
        if raw.isdigit():
            return dt.datetime.fromtimestamp(int(raw) / 1000, tz=dt.timezone.utc).date()
        value = parse_date(raw[:10])
        if value is None:
            raise TransformError(f"not a date: {raw!r}")
        return value
    if kind == "datetime":
        if raw.isdigit():
            return dt.datetime.fromtimestamp(int(raw) / 1000, tz=dt.timezone.utc)
        value = parse_datetime(raw.replace("Z", "+00:00"))
        if value is None:
            raise TransformError(f"not a date-time: {raw!r}")
        return value if timezone.is_aware(value) else timezone.make_aware(value, dt.timezone.utc)
    if kind == "picklist":
        reverse = {str(v): k for k, v in (value_map or {}).items()}
        if raw not in reverse:
            raise TransformError(f"no local value for picklist value {raw!r}")
        return reverse[raw]
    if kind == "multi":
        return [part for part in raw.split(";") if part]
    return raw


def validate_mapping(mapping) -> None:
    """Refuse a mapping that could never work, naming the field."""
    errors: dict[str, str] = {}
    from martech.crm import objects

    try:
        model = objects.get(mapping.object).model_class
    except LookupError as exc:
        errors["object"] = str(exc)
        model = None
    local = (mapping.local_field or "").strip()
    if not local:
        errors["local_field"] = "Name a local field."
    elif local.startswith("properties."):
        if not local.removeprefix("properties.") or " " in local:
            errors["local_field"] = "A custom property is written properties.<key> with no spaces."
        elif model is not None and not any(f.name == "properties" for f in model._meta.get_fields()):
            errors["local_field"] = f"{model.__name__} has no custom properties."
    elif model is not None:
        try:
            field = model._meta.get_field(local)
            if not field.concrete or field.many_to_many or field.one_to_many:
                errors["local_field"] = f"{local!r} is not a stored field of {model.__name__}."
        except FieldDoesNotExist:
            errors["local_field"] = f"{model.__name__} has no field {local!r}."
    if not (mapping.remote_field or "").strip():
        errors["remote_field"] = "Name the CRM field."
    if mapping.kind == "picklist":
        if not isinstance(mapping.value_map, dict) or not mapping.value_map:
            errors["value_map"] = "A picklist needs a value map {local: remote}."
        elif len(set(map(str, mapping.value_map.values()))) != len(mapping.value_map):
            errors["value_map"] = "Two local values map to the same CRM value, so a pull could not tell them apart."
    elif mapping.value_map:
        errors["value_map"] = "Only picklist mappings take a value map."
    if mapping.default:
        try:
            to_local(mapping.kind, mapping.default, mapping.value_map if isinstance(mapping.value_map, dict) else {})
        except TransformError as exc:
            errors["default"] = f"Default does not fit the {mapping.kind} type: {exc}."
    if errors:
        raise ValidationError(errors)


def read_local(obj, local_field: str) -> Any:
    if local_field.startswith("properties."):
        return (obj.properties or {}).get(local_field.removeprefix("properties."))
    if local_field == "lifecycle_stage":
        stage = getattr(obj, "lifecycle_stage", None)
        return stage.key if stage else None
    value = getattr(obj, local_field, None)
    return getattr(value, "pk", value)
