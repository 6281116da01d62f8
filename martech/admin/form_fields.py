"""The structured editor for Form.fields: one table row per field, so ops
staff never edit raw JSON. Validation stays in ``Form.clean`` (through
``form_fields_clean``), which names the field and the reason."""
from __future__ import annotations

import json
from typing import Any

from django import forms
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from martech.models import FORM_FIELD_KEYS, FormFieldType, WritePolicy

EXTRA_ROWS = 3


def _choices_text(choices: Any) -> str:
    lines = []
    for choice in choices or []:
        if isinstance(choice, (list, tuple)) and len(choice) == 2:
            value, label = (str(c) for c in choice)
            lines.append(value if value == label else f"{value}|{label}")
        else:
            lines.append(str(choice))
    return "\n".join(lines)


def _choices_list(text: str) -> list[list[str]]:
    out = []
    for line in (text or "").splitlines():
        if line.strip():
            value, _, label = line.partition("|")
            out.append([value.strip(), label.strip() or value.strip()])
    return out


class FieldDefinitionsWidget(forms.Widget):
    """Renders the definitions as rows of inputs named ``<name>-<i>-<key>``
    plus empty rows to add fields; posts back the JSON list Form.fields holds."""

    template_name = "admin/martech/form/field_definitions_widget.html"

    def __init__(self, lead_fields: list[str] | None = None, attrs=None):
        super().__init__(attrs)
        self.lead_fields = lead_fields or []

    def get_context(self, name, value, attrs):
        context = super().get_context(name, value, attrs)
        try:
            rows = json.loads(value) if isinstance(value, str) else (value or [])
        except ValueError:
            rows = []
        if not isinstance(rows, list):
            rows = []
        prepared = []
        for i, row in enumerate([*rows, *({} for _ in range(EXTRA_ROWS))]):
            row = row if isinstance(row, dict) else {}
            prepared.append({
                "index": i,
                "order": (i + 1) * 10,
                **{key: row.get(key, "") for key in FORM_FIELD_KEYS},
                "required": bool(row.get("required")),
                "type": row.get("type") or ("" if not row else FormFieldType.TEXT),
                "policy": row.get("policy") or WritePolicy.FILL,
                "choices": _choices_text(row.get("choices")),
            })
        context["widget"].update({
            "rows": prepared,
            "count": len(prepared),
            "types": FormFieldType.choices,
            "policies": WritePolicy.choices,
            "lead_fields": self.lead_fields,
        })
        return context

    def render(self, name, value, attrs=None, renderer=None):
        # Through the site's template engine: the template lives in the
        # project's templates/ folder, which the default form renderer does not search.
        return mark_safe(render_to_string(self.template_name, self.get_context(name, value, attrs)))

    def value_from_datadict(self, data, files, name):
        try:
            count = int(data.get(f"{name}-count", 0))
        except (TypeError, ValueError):
            count = 0
        rows = []
        for i in range(min(count, 200)):
            prefix = f"{name}-{i}-"
            row = {key: (data.get(prefix + key) or "").strip() for key in FORM_FIELD_KEYS if key != "required"}
            if not (row["name"] or row["label"] or row["lead_field"]):
                continue  # an empty extra row, or a field whose name was cleared to remove it
            row["required"] = data.get(prefix + "required") in ("on", "true", "1")
            row["choices"] = _choices_list(row["choices"]) if row["type"] == FormFieldType.SELECT else []
            try:
                order = float(data.get(prefix + "order") or (i + 1) * 10)
            except ValueError:
                order = (i + 1) * 10
            rows.append((order, i, row))
        return json.dumps([row for _, _, row in sorted(rows, key=lambda r: (r[0], r[1]))])

    def value_omitted_from_data(self, data, files, name):
        return f"{name}-count" not in data
