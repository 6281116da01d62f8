"""Drop the index on Lead.total_score.

With it every score write is a non-HOT UPDATE that inserts a new entry into
each of the lead table's ~20 indexes; without it (and with free space left in
the pages: scoring migration 0004) a score write is a heap-only-tuple update
that touches no index. The bulk recompute of 1,000,000 leads rewrites about
half of them (bench/README.md). Nothing needs the index: no admin or API
ordering uses total_score, and segment conditions on score ("score >= 50")
match a large share of the leads, where PostgreSQL scans the table anyway.
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
