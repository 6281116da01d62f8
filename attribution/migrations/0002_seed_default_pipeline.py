"""A default sales pipeline, so opportunities from the API, CSV or a CRM
have stages to land in. Editable data: ops may rename, reorder or add."""
from decimal import Decimal

from django.db import migrations

STAGES = [
    ("prospecting", "Prospecting", "10", False, False),
    ("qualification", "Qualification", "20", False, False),
    ("proposal", "Proposal", "50", False, False),
    ("negotiation", "Negotiation", "75", False, False),
    ("closed_won", "Closed won", "100", True, False),
    ("closed_lost", "Closed lost", "0", False, True),
]


def seed(apps, schema_editor):
    Pipeline = apps.get_model("attribution", "Pipeline")
    OpportunityStage = apps.get_model("attribution", "OpportunityStage")
    pipeline, _ = Pipeline.objects.get_or_create(key="default", defaults={"name": "Sales pipeline", "is_default": True})
    for order, (key, name, probability, won, lost) in enumerate(STAGES, start=1):
        OpportunityStage.objects.get_or_create(
            pipeline=pipeline, key=key,
            defaults={"name": name, "order": order, "probability": Decimal(probability), "is_won": won, "is_lost": lost},
        )


class Migration(migrations.Migration):
    dependencies = [("attribution", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
