"""PostgreSQL only: leave 20% of each lead table page free (fillfactor 80).

A score write changes no indexed column (martech migration 0004 dropped the
total_score index), so PostgreSQL can make it a heap-only-tuple (HOT) update,
touching none of the lead table's ~20 indexes, but only if the new row
version fits in the same page. Pages filled to 100% by inserts or a COPY have
no room, and the first bulk recompute would move the rows it changes to new
pages and write every index entry again. Later runs reuse the space vacuum
frees from the previous run's old versions.

Only rows written after this migration get the free space: an existing large
table needs ``VACUUM FULL martech_lead`` (or pg_repack, without the long
exclusive lock) once to rewrite its pages (docs/scoring.md).

SQLite has no fillfactor: nothing to do there.
"""
from django.db import migrations

FILLFACTOR = 80


def set_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f'ALTER TABLE "martech_lead" SET (fillfactor = {FILLFACTOR})')


def reset_fillfactor(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute('ALTER TABLE "martech_lead" RESET (fillfactor)')


class Migration(migrations.Migration):
    dependencies = [
        ("scoring", "0003_upper_text_statistics"),
        ("martech", "0004_lead_total_score_no_index"),
    ]

    operations = [migrations.RunPython(set_fillfactor, reset_fillfactor, elidable=False)]
