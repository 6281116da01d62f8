"""Reference data every installation starts with: lifecycle stages, channel
grouping rules, common UTM aliases, the base event catalog and the staff
roles. All of it is editable data afterwards; re-running changes nothing."""
from django.contrib.auth.management import create_permissions
from django.db import migrations

STAGES = [
    ("subscriber", "Subscriber"),
    ("lead", "Lead"),
    ("mql", "Marketing qualified lead (MQL)"),
    ("sql", "Sales qualified lead (SQL)"),
    ("opportunity", "Opportunity"),
    ("customer", "Customer"),
    ("evangelist", "Evangelist"),
    ("other", "Other"),
]

_SEARCH = r".*(google|bing|yahoo|duckduckgo|baidu|yandex|ecosia).*"
_SOCIAL = r".*(facebook|fb|instagram|linkedin|twitter|x\.com|t\.co|tiktok|reddit|pinterest|youtube).*"
# (order, name, source regex, medium regex, channel); empty regex matches anything.
CHANNEL_RULES = [
    (10, "Paid search", _SEARCH, r"cpc|ppc|paid[-_ ]?search|sem", "paid_search"),
    (20, "Paid social", _SOCIAL, r"cpc|ppc|cpm|paid|paid[-_ ]?social|social[-_ ]?paid", "paid_social"),
    (30, "Display", "", r"display|banner|cpm|programmatic|retargeting", "display"),
    (40, "Email by medium", "", r"e[-_ ]?mail|newsletter", "email"),
    (50, "Email by source", r"e[-_ ]?mail|newsletter|hubspot|marketo|mailchimp", "", "email"),
    (60, "Organic social", _SOCIAL, r"|social|social[-_ ]?(network|media)|sm|organic[-_ ]?social|referral", "organic_social"),
    (70, "Organic search", "", r"organic", "organic_search"),
    (80, "Events", "", r"events?|webinar|conference|trade[-_ ]?show|field", "events"),
    (90, "Referral", "", r"referral|partner|affiliate", "referral"),
    (100, "Direct", r"|\(direct\)|direct", r"|\(none\)|none", "direct"),
]

ALIASES = [
    ("source", "adwords", "google"),
    ("source", "google ads", "google"),
    ("source", "googleads", "google"),
    ("source", "fb", "facebook"),
    ("source", "ig", "instagram"),
    ("source", "li", "linkedin"),
    ("source", "bing ads", "bing"),
    ("medium", "e-mail", "email"),
    ("medium", "paidsearch", "cpc"),
    ("medium", "paid_search", "cpc"),
    ("medium", "paid-social", "paid_social"),
]

_URL = {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}
EVENT_TYPES = [
    ("page_view", "A page was viewed (Segment page call).", {"type": "object"}, True),
    ("identify", "A visitor identified themselves (Segment identify call).", {"type": "object"}, False),
    ("form_submitted", "A capture form was submitted.", {"type": "object", "required": ["form"]}, True),
    ("ad_clicked", "A click on a paid ad.", {"type": "object"}, True),
    ("email_opened", "A marketing email was opened.", {"type": "object"}, False),
    ("email_clicked", "A link in a marketing email was clicked.", _URL, True),
    ("content_downloaded", "Gated content (ebook, whitepaper) was downloaded.", {"type": "object", "required": ["asset"], "properties": {"asset": {"type": "string"}}}, True),
    ("webinar_registered", "Registered for a webinar.", {"type": "object"}, True),
    ("webinar_attended", "Attended a webinar.", {"type": "object"}, True),
    ("event_attended", "Attended an in-person event.", {"type": "object"}, True),
    ("demo_requested", "Asked for a sales demo.", {"type": "object"}, True),
    ("trial_started", "Started a product trial.", {"type": "object"}, False),
    ("pricing_viewed", "Viewed the pricing page.", {"type": "object"}, False),
]


def seed(apps, schema_editor):
    LifecycleStage = apps.get_model("martech", "LifecycleStage")
    for order, (key, name) in enumerate(STAGES, start=1):
        LifecycleStage.objects.get_or_create(key=key, defaults={"name": name, "order": order * 10})

    ChannelRule = apps.get_model("martech", "ChannelRule")
    if not ChannelRule.objects.exists():
        for order, name, source, medium, channel in CHANNEL_RULES:
            ChannelRule.objects.create(order=order, name=name, source_pattern=source, medium_pattern=medium, channel=channel)

    UtmAlias = apps.get_model("martech", "UtmAlias")
    for field, alias, canonical in ALIASES:
        UtmAlias.objects.get_or_create(field=field, alias=alias, defaults={"canonical": canonical})

    EventType = apps.get_model("martech", "EventType")
    for name, description, schema, touch in EVENT_TYPES:
        EventType.objects.get_or_create(
            name=name, defaults={"description": description, "properties_schema": schema, "is_touchpoint": touch}
        )


def roles(apps, schema_editor):
    from martech.roles import sync_roles

    # Permissions are normally made after migrate; make them now so the
    # groups get them on a fresh database.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    sync_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("martech", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(seed, migrations.RunPython.noop),
        migrations.RunPython(roles, migrations.RunPython.noop),
    ]
