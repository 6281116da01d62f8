from django.db import migrations

NAMES = {
    "email_opened": "A nurture email was opened (tracking pixel).",
    "email_clicked": "A link in a nurture email was clicked.",
    "email_unsubscribed": "A lead unsubscribed from a nurture email.",
}


def add(apps, schema_editor):
    EventType = apps.get_model("martech", "EventType")
    for name, description in NAMES.items():
        EventType.objects.get_or_create(name=name, defaults={"description": description, "is_touchpoint": name != "email_unsubscribed"})


class Migration(migrations.Migration):
    dependencies = [("nurture", "0001_initial"), ("martech", "0003_sales_task")]
    operations = [migrations.RunPython(add, migrations.RunPython.noop)]
