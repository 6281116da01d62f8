"""Factories for the core models. Later apps add their own module beside this."""
from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone

from martech import models


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    is_staff = True
    password = factory.django.Password("pw-Secret-123")

    @factory.post_generation
    def groups(self, create, extracted, **kwargs):
        if create and extracted:
            for name in extracted:
                self.groups.add(Group.objects.get(name=name))


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Account

    name = factory.Faker("company")
    domain = factory.Sequence(lambda n: f"company{n}.example")
    industry = "Software"
    employee_count = 250
    country = "US"


class LeadFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Lead

    email = factory.Sequence(lambda n: f"lead{n}@example.org")
    first_name = factory.Faker("first_name")
    last_name = factory.Faker("last_name")
    job_title = "Marketing Manager"
    country = "US"
    lifecycle_stage = factory.LazyFunction(lambda: models.LifecycleStage.objects.get(key="lead"))


class CampaignFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Campaign

    name = factory.Sequence(lambda n: f"Campaign {n}")
    utm_source = "google"
    utm_medium = "cpc"
    utm_campaign = factory.Sequence(lambda n: f"campaign-{n}")
    channel = models.Channel.PAID_SEARCH


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Event

    client_event_id = factory.Sequence(lambda n: f"evt-{n}")
    event_type = factory.LazyFunction(lambda: models.EventType.objects.get(name="page_view"))
    lead = factory.SubFactory(LeadFactory)
    occurred_at = factory.LazyFunction(timezone.now)
    properties = factory.LazyFunction(lambda: {"url": "https://example.com/"})


def form_field(name: str, lead_field: str, **extra) -> dict:
    """One field definition of Form.fields, with every key Form.clean keeps."""
    return {"name": name, "label": name.replace("_", " ").capitalize(), "type": "email" if lead_field == "email" else "text",
            "lead_field": lead_field, "required": False, "policy": "fill", "choices": [], "initial": "", "help_text": "",
            "error_message": "", **extra}


class FormFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Form

    key = factory.Sequence(lambda n: f"form-{n}")
    name = factory.Sequence(lambda n: f"Form {n}")
    fields = factory.LazyFunction(
        lambda: [
            form_field("email", "email", type="email", required=True),
            form_field("first_name", "first_name"),
            form_field("company", "company_name"),
            form_field("topic", "properties.topic"),
        ]
    )
    consent_field = "consent"
    consent_text = "I agree to receive marketing email."
    event_type = factory.LazyFunction(lambda: models.EventType.objects.get(name="form_submitted"))


class WebsiteFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = models.Website

    name = factory.Sequence(lambda n: f"Website {n}")
    allowed_origins = factory.LazyFunction(lambda: ["https://www.acme.example"])
    track_events = factory.LazyFunction(lambda: ["demo_requested", "pricing_viewed"])
