from collections import Counter

import pytest
from django.core.management import call_command
from django.db.models import Count, Min

from martech.models import (
    Account,
    Campaign,
    Channel,
    ConsentRecord,
    Event,
    Form,
    Identity,
    Lead,
    StageTransition,
)
from martech.services.demo import ACCOUNT_COUNT, CAMPAIGNS, demo_seed
from martech.services.normalize import free_mail_domains, normalize_email

pytestmark = pytest.mark.django_db

MODELS = (Account, Campaign, Form, Lead, StageTransition, ConsentRecord, Identity, Event)


def _counts() -> dict[str, int]:
    return {m.__name__: m.objects.count() for m in MODELS}


@pytest.fixture
def seeded():
    return demo_seed(leads=300)


def test_counts(seeded):
    assert seeded.leads == Lead.objects.count() == 300
    assert Account.objects.count() == ACCOUNT_COUNT
    assert Campaign.objects.count() == len(CAMPAIGNS)
    assert set(Form.objects.values_list("key", flat=True)) == {"newsletter", "ebook", "demo-request"}
    assert Identity.objects.count() == 300
    assert Event.objects.count() == seeded.events > 300 * 5
    assert StageTransition.objects.count() == seeded.stage_transitions >= 300
    # Every lead has history: events, a first transition, and an anonymous id.
    assert not Lead.objects.annotate(n=Count("events")).filter(n=0).exists()
    assert not Lead.objects.annotate(n=Count("stage_transitions")).filter(n=0).exists()


def test_proportions(seeded):
    stages = Counter(Lead.objects.values_list("lifecycle_stage__key", flat=True))
    # A funnel: the top is wide, every step down is narrower.
    assert stages["subscriber"] + stages["lead"] > 150
    assert stages["lead"] > stages["mql"] > stages["sql"] > stages["customer"] > 0
    free = sum(1 for e in Lead.objects.values_list("email", flat=True) if e.rpartition("@")[2] in free_mail_domains())
    assert 30 <= free <= 100  # most leads are at accounts
    assert Lead.objects.filter(account__isnull=True).count() == free
    # Work emails are on the account's domain.
    for email, domain in Lead.objects.filter(account__isnull=False).values_list("email", "account__domain"):
        assert email.endswith("@" + domain)
    assert Lead.objects.exclude(phone="").count() > 150
    for phone in Lead.objects.exclude(phone="").values_list("phone", flat=True):
        assert phone.is_valid() and str(phone) == phone.as_e164
    assert not Lead.objects.filter(time_zone="").exists()
    consent = Counter(ConsentRecord.objects.values_list("channel", "status"))
    assert consent[("email", "granted")] > 240
    assert 0 < consent[("email", "withdrawn")] < 60
    assert consent[("sms", "granted")] > 0
    # Campaigns cover every channel the brief names.
    assert {Channel.PAID_SEARCH, Channel.PAID_SOCIAL, Channel.DISPLAY, Channel.EMAIL, Channel.ORGANIC_SEARCH,
            Channel.EVENTS, Channel.REFERRAL, Channel.DIRECT} <= set(Campaign.objects.values_list("channel", flat=True))
    assert set(Event.objects.values_list("event_type__name", flat=True)) >= {
        "page_view", "form_submitted", "email_clicked", "ad_clicked", "webinar_registered", "demo_requested"
    }


def test_every_email_is_normalized(seeded):
    emails = list(Lead.objects.values_list("email", flat=True))
    assert len(emails) == len(set(emails))
    assert all(e == normalize_email(e) for e in emails)


def test_touch_fields_and_utms_are_consistent(seeded):
    first = {r["lead"]: r["first"] for r in Event.objects.values("lead").annotate(first=Min("occurred_at"))}
    for lead in Lead.objects.all():
        assert lead.first_touch_at == first[lead.pk]
        ev = lead.events.order_by("occurred_at", "id").first()
        assert (lead.first_utm_source, lead.first_utm_medium, lead.first_utm_campaign) == (
            ev.utm_source, ev.utm_medium, ev.utm_campaign
        )
        assert lead.original_source == ev.channel
        assert lead.latest_touch_at == lead.events.order_by("-occurred_at").first().occurred_at
        assert lead.created_at >= lead.first_touch_at
    for ev in Event.objects.select_related("campaign").iterator():
        assert (ev.utm_source, ev.utm_medium, ev.utm_campaign) == (
            ev.campaign.utm_source, ev.campaign.utm_medium, ev.campaign.utm_campaign
        )
        assert ev.channel == ev.campaign.channel


def test_stage_history_looks_like_lead_change_stage(seeded):
    for lead in Lead.objects.prefetch_related("stage_transitions"):
        chain = sorted(lead.stage_transitions.all(), key=lambda t: t.changed_at)
        assert chain[0].from_stage_id is None and chain[0].reason == "created"
        for prev, nxt in zip(chain, chain[1:]):
            assert nxt.from_stage_id == prev.to_stage_id
            assert nxt.reason
        assert chain[-1].to_stage_id == lead.lifecycle_stage_id


def test_second_run_adds_and_changes_nothing(seeded):
    before = _counts()
    snapshot = list(Lead.objects.order_by("email").values_list("email", "lifecycle_stage_id", "updated_at"))
    again = demo_seed(leads=300)
    assert set(again.as_dict().values()) == {0}
    assert _counts() == before
    assert list(Lead.objects.order_by("email").values_list("email", "lifecycle_stage_id", "updated_at")) == snapshot


def test_larger_run_adds_only_the_difference():
    demo_seed(leads=100)
    first = set(Lead.objects.values_list("email", flat=True))
    events = Event.objects.count()
    more = demo_seed(leads=150)
    assert more.leads == 50 and more.accounts == 0 and more.campaigns == 0
    assert Lead.objects.count() == 150
    assert first < set(Lead.objects.values_list("email", flat=True))
    assert Event.objects.count() == events + more.events


def test_same_people_whatever_the_order_of_runs():
    demo_seed(leads=40)
    demo_seed(leads=80)
    stepwise = sorted(Lead.objects.values_list("email", "first_name", "job_title", "country", "lifecycle_stage__key"))
    Lead.objects.all().delete()
    demo_seed(leads=80)
    at_once = sorted(Lead.objects.values_list("email", "first_name", "job_title", "country", "lifecycle_stage__key"))
    assert stepwise == at_once


def test_command(capsys):
    call_command("seed_demo", "--leads", "20", "--no-progress")
    assert "20 leads" in capsys.readouterr().out
    assert Lead.objects.count() == 20
