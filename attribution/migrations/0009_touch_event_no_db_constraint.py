# A touchpoint's event stays a one-to-one in Django, without a database foreign
# key: on PostgreSQL the events table is partitioned by time and its primary key
# is (id, occurred_at), which a foreign key on id alone cannot reference. The
# retention of events keeps every event a touchpoint points at (martech/retention.py).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('attribution', '0008_deal_deletions'),
        ('martech', '0013_event_form_idx'),
    ]

    operations = [
        migrations.AlterField(
            model_name='touchpoint',
            name='event',
            field=models.OneToOneField(db_constraint=False, on_delete=django.db.models.deletion.CASCADE,
                                       related_name='touchpoint', to='martech.event'),
        ),
    ]
