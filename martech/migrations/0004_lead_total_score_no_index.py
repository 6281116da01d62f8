"""Drop the index on Lead.total_score.

With it every score write is a non-HOT UPDATE that inserts a new entry into
each of the lead table's ~20 indexes; without it (and with free space left in
the pages: scoring migration 0004) a score write is a heap-only-tuple update
that touches no index. The bulk recompute of 1,000,000 leads rewrites about
half of them (bench/README.md). What the index served costs a table scan
instead, well under a second at 1,000,000 leads (docs/scoring.md): no
default ordering (lead changelist, API pages) uses total_score; sorting the
changelist by its score column and the segment page's top 20 by score are
top-N sorts; segment conditions on score ("score >= 10") mostly match a large
share of the leads, where PostgreSQL scans the table anyway.
"""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('martech', '0003_sales_task'),
    ]

    operations = [
        migrations.AlterField(
            model_name='lead',
            name='total_score',
            field=models.IntegerField(default=0),
        ),
    ]
