"""The events the nurture gallery's journeys trigger on, exit on or wait for,
added to the event catalog: without them the catalog rejects (or
quarantines) those events and the journeys can never enroll anyone or meet
their goal. Editable data afterwards: a type ops already made (or
deactivated) is left as it is; re-running changes nothing."""
from django.db import migrations

EVENT_TYPES = [
    # name, label, description, touchpoint
    ("ebook_downloaded", "Ebook downloaded", "An ebook was downloaded (the ebook drip's trigger).", True),
    ("cart_abandoned", "Cart abandoned", "A shopping cart was left without checking out; properties may carry "
     "cart_value and orders_count.", False),
    ("order_completed", "Order completed", "An order was placed (the cart recovery's goal).", False),
    ("feature_used", "Product feature used", "A trial or customer used a product feature.", False),
    ("subscription_started", "Subscription started", "A paid subscription began (the trial onboarding's goal).", False),
]


def seed(apps, schema_editor):
    EventType = apps.get_model("martech", "EventType")
    for name, label, description, touch in EVENT_TYPES:
        EventType.objects.get_or_create(
            name=name, defaults={"label": label, "description": description, "properties_schema": {"type": "object"},
                                 "is_touchpoint": touch},
        )


def unseed(apps, schema_editor):
    # Only the types nothing was recorded under.
    apps.get_model("martech", "EventType").objects.filter(
        name__in=[n for n, *_ in EVENT_TYPES], events__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("martech", "0009_words_eventtype_label")]

    operations = [migrations.RunPython(seed, unseed)]
