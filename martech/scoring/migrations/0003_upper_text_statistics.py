"""PostgreSQL only: planner statistics on UPPER(column) of the text columns
segment and rule conditions compare.

Conditions compile text comparisons to UPPER(col) = / IN / LIKE UPPER(...)
(case-insensitive, martech/conditions.py). PostgreSQL keeps no statistics for
an expression unless it has an expression index or a statistics object, so it
guessed 0.5% for UPPER(industry) = 'SOFTWARE' when every account matched, and
chose a nested loop over 1,000 accounts that counted a 5-clause segment of
1,000,000 leads in 4.7 s; with these statistics it plans a (parallel) hash
join and counts in about 0.5 s (bench/README.md).

Statistics objects rather than expression indexes: they cost nothing on
writes, and the lead table already carries 20 indexes that every score write
(a non-HOT UPDATE, total_score is indexed) must maintain; each more index
slows the bulk recompute. Segments over a selective text value can still use
the plain btree indexes on country/industry for exact-case values.

SQLite has no such planner knob: nothing to do there.
"""
from django.db import migrations

LEAD_COLUMNS = [
    "country", "region", "job_title", "first_name", "last_name", "company_name", "email", "original_source",
    "time_zone", "first_utm_source", "first_utm_medium", "first_utm_campaign", "latest_utm_source",
    "latest_utm_medium", "latest_utm_campaign",
]
ACCOUNT_COLUMNS = ["industry", "country", "name", "domain", "currency"]
TABLES = [("martech_lead", "lead", LEAD_COLUMNS), ("martech_account", "account", ACCOUNT_COLUMNS)]


def _names():
    for table, short, columns in TABLES:
        for column in columns:
            yield table, column, f"scoring_upper_{short}_{column}"


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, column, name in _names():
        schema_editor.execute(f'CREATE STATISTICS IF NOT EXISTS "{name}" ON (UPPER("{column}"::text)) FROM "{table}"')
    for table, _, _ in TABLES:
        schema_editor.execute(f'ANALYZE "{table}"')


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for _, _, name in _names():
        schema_editor.execute(f'DROP STATISTICS IF EXISTS "{name}"')


class Migration(migrations.Migration):
    dependencies = [
        ("scoring", "0002_rule_updated_at_history_breakdown"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]
