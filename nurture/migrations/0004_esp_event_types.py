from django.db import migrations

# The ESP's tracking webhooks record these on the lead's timeline
# (nurture.services.esp_event_record); email_unsubscribed exists (0002).
NAMES = {
    "email_delivered": "The ESP delivered a nurture email to the recipient's server.",
    "email_bounced": "A nurture email bounced (properties.bounce: hard or soft; a hard bounce suppresses the address).",
    "email_complained": "The recipient marked a nurture email as spam (suppresses the address, withdraws email consent).",
}


def add(apps, schema_editor):
    EventType = apps.get_model("martech", "EventType")
    for name, description in NAMES.items():
        EventType.objects.get_or_create(name=name, defaults={"description": description, "is_touchpoint": False})


def remove(apps, schema_editor):
    apps.get_model("martech", "EventType").objects.filter(name__in=NAMES, events__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("nurture", "0003_segment_members")]
    operations = [migrations.RunPython(add, remove)]
