"""Query filters for the list endpoints (django-filter).

Ranges are ``<field>_after`` / ``<field>_before`` (ISO 8601, both ends
included) and ``<field>_min`` / ``<field>_max``, one filter per parameter so
an error names the parameter the client sent. Relations filter by id with plain number
filters: a ModelChoiceFilter would cost a query per request to check the id.
"""
from __future__ import annotations

import datetime as dt

import django_filters as df
from django_filters.fields import IsoDateTimeField
from django import forms
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from martech.models import Account, Campaign, Channel, Event, Lead


@extend_schema_field(OpenApiTypes.INT)
class IntegerFilter(df.NumberFilter):
    field_class = forms.IntegerField


class UtcIsoDateTimeField(IsoDateTimeField):
    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return None
        # PostgreSQL refuses offsets beyond +-15:59 that Python accepts (+22:03
        # is a 500 there); UTC is what the column stores anyway.
        try:
            return value.astimezone(dt.timezone.utc)
        except OverflowError:
            raise forms.ValidationError("Date and time out of range.", code="invalid") from None


class DateTimeFilter(df.IsoDateTimeFilter):
    """ISO 8601 with an offset (or UTC when none)."""

    field_class = UtcIsoDateTimeField


class LowerCharFilter(df.CharFilter):
    """Emails, domains and UTM keys are stored trimmed and lower-cased."""

    def filter(self, qs, value):
        return super().filter(qs, value.strip().lower() if value else value)


class UpperCharFilter(df.CharFilter):
    """Country codes are stored upper-cased."""

    def filter(self, qs, value):
        return super().filter(qs, value.strip().upper() if value else value)


class LeadFilter(df.FilterSet):
    email = LowerCharFilter(field_name="email")
    lifecycle_stage = df.CharFilter(field_name="lifecycle_stage__key", help_text="Stage key")
    country = UpperCharFilter(field_name="country", help_text="ISO 3166-1 alpha-2")
    owner = IntegerFilter(field_name="owner_id")
    account = IntegerFilter(field_name="account_id")
    created_at_after = DateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_at_before = DateTimeFilter(field_name="created_at", lookup_expr="lte")
    # For incremental dashboards: "what changed since my last pull".
    updated_at_after = DateTimeFilter(field_name="updated_at", lookup_expr="gte")
    updated_at_before = DateTimeFilter(field_name="updated_at", lookup_expr="lte")
    total_score_min = IntegerFilter(field_name="total_score", lookup_expr="gte")
    total_score_max = IntegerFilter(field_name="total_score", lookup_expr="lte")
    original_source = df.ChoiceFilter(field_name="original_source", choices=Channel.choices)

    class Meta:
        model = Lead
        fields = []


class AccountFilter(df.FilterSet):
    domain = LowerCharFilter(field_name="domain")
    industry = df.CharFilter(field_name="industry", lookup_expr="iexact")
    country = UpperCharFilter(field_name="country", help_text="ISO 3166-1 alpha-2")

    class Meta:
        model = Account
        fields = []


class EventFilter(df.FilterSet):
    lead = IntegerFilter(field_name="lead_id")
    type = df.CharFilter(field_name="event_type__name", help_text="Event type name, e.g. page_view")
    occurred_at_after = DateTimeFilter(field_name="occurred_at", lookup_expr="gte")
    occurred_at_before = DateTimeFilter(field_name="occurred_at", lookup_expr="lte")
    campaign = IntegerFilter(field_name="campaign_id")
    channel = df.ChoiceFilter(field_name="channel", choices=Channel.choices)

    class Meta:
        model = Event
        fields = []


class CampaignFilter(df.FilterSet):
    channel = df.ChoiceFilter(field_name="channel", choices=Channel.choices)
    utm_source = LowerCharFilter(field_name="utm_source")
    utm_medium = LowerCharFilter(field_name="utm_medium")
    utm_campaign = LowerCharFilter(field_name="utm_campaign")

    class Meta:
        model = Campaign
        fields = []
