"""The event type a campaign membership made in a CRM is recorded as
(``services.campaigns.campaign_member_record``): a touch, so attribution and
the campaign's member list see it. Editable data afterwards; re-running
changes nothing."""
from django.db import migrations


def seed(apps, schema_editor):
    EventType = apps.get_model("martech", "EventType")
    EventType.objects.get_or_create(
        name="campaign_member_added",
        defaults={"description": "Added to a campaign in the CRM (a Salesforce CampaignMember); properties carry "
                                 "the member id, its status and whether it responded.",
                  "properties_schema": {"type": "object", "required": ["member_id"],
                                        "properties": {"member_id": {"type": "string"},
                                                       "status": {"type": "string"},
                                                       "has_responded": {"type": "boolean"}}},
                  "is_touchpoint": True},
    )


class Migration(migrations.Migration):
    dependencies = [("martech", "0004_lead_total_score_no_index")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
