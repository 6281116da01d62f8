"""0007_form_hosting turns each form's old field_map / required_fields into
field definitions (and back), so forms saved before it keep working."""
from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("martech", "0006_config_version")]
AFTER = [("martech", "0007_form_hosting")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


# Transactional (migrations cannot run inside the test's transaction), and
# without serialized_rollback: pytest-django runs transactional tests last,
# after others have flushed the tables and post_migrate re-created the groups,
# which a serialized restore would insert a second time.
@pytest.mark.django_db(transaction=True)
def test_field_map_becomes_field_definitions_and_back():
    # Every app's latest: going back unapplied the other apps' migrations that depend on martech's.
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    old_apps = _migrate(BEFORE)
    try:
        OldForm = old_apps.get_model("martech", "Form")
        OldForm.objects.create(
            key="legacy", name="Legacy", honeypot_field="website",
            field_map={"mail": "email", "tel": "phone", "org": "company_name", "plan": "properties.plan"},
            required_fields=["mail", "org"],
        )
        Form = _migrate(AFTER).get_model("martech", "Form")
        fields = Form.objects.get(key="legacy").fields
        # Sorted: PostgreSQL's jsonb keeps no key order, so the old map's order is the database's.
        assert sorted((f["name"], f["type"], f["lead_field"], f["required"], f["policy"]) for f in fields) == sorted([
            ("mail", "email", "email", True, "fill"),
            ("tel", "tel", "phone", False, "fill"),
            ("org", "text", "company_name", True, "fill"),
            ("plan", "text", "properties.plan", False, "fill"),
        ])
        assert {f["name"]: f["label"] for f in fields}["mail"] == "Mail"
        back = _migrate(BEFORE).get_model("martech", "Form").objects.get(key="legacy")
        assert back.field_map == {"mail": "email", "tel": "phone", "org": "company_name", "plan": "properties.plan"}
        assert sorted(back.required_fields) == ["mail", "org"]
    finally:
        _migrate(latest)
