"""Public input never harms a lead: a capture-form post, which anyone can send
knowing only an email, fills empty fields of an existing lead and nothing
else. It never overwrites a stored value, never moves the stage backwards,
never touches owner, score or CRM ids, and the answer never tells whether the
email was known. What it could not apply is kept on the submission event."""
from __future__ import annotations

import pytest
from django.core.cache import cache
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from rest_framework.test import APIClient

from martech.models import Event, Lead, LifecycleStage
from martech.selectors import lead_timeline
from martech.services.leads import CRM_KEYS, lead_upsert
from tests.factories import FormFactory, LeadFactory, UserFactory, form_field

pytestmark = pytest.mark.django_db

RECEIVED = {"status": "received"}
STAGE_KEYS = ["subscriber", "lead", "mql", "sql", "opportunity", "customer", "evangelist"]

# Every field a form can map, with a stored value and a different hostile one.
STORED = {
    "first_name": "Carla", "last_name": "Customer", "job_title": "CFO", "phone": "+14155550100",
    "company_name": "Acme", "country": "US", "region": "CA", "postal_code": "94105",
    "time_zone": "America/Los_Angeles", "properties.plan": "enterprise",
}
HOSTILE = {
    "first_name": "Mallory", "last_name": "Attacker", "job_title": "Intern", "phone": "+442071838750",
    "company_name": "Evil Corp", "country": "DE", "region": "Berlin", "postal_code": "10115",
    "time_zone": "Europe/Berlin", "properties.plan": "free",
}


@pytest.fixture(autouse=True)
def _local_cache(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "public-input"}}
    cache.clear()


def _form(key="newsletter", stage="subscriber"):
    fields = [form_field("email", "email", required=True),
              *(form_field(name.replace(".", "_"), name) for name in HOSTILE)]
    return FormFactory(key=key, fields=fields, defaults={"lifecycle_stage": stage})


def _customer(stage_key="customer", **overrides) -> Lead:
    owner = UserFactory(username=f"rep-{stage_key}")
    values = {k: v for k, v in STORED.items() if not k.startswith("properties.")}
    lead = LeadFactory(
        email="carla@acme.com",
        lifecycle_stage=LifecycleStage.objects.get(key=stage_key),
        owner=owner,
        total_score=87,
        fit_score=40,
        engagement_score=47,
        hubspot_id="hs-1",
        salesforce_contact_id="003000000000001AAA",
        properties={"plan": "enterprise"},
        **{**values, **overrides},
    )
    return lead


def _snapshot(lead: Lead) -> dict:
    lead.refresh_from_db()
    return {f.attname: getattr(lead, f.attname) for f in Lead._meta.concrete_fields if f.attname != "updated_at"}


def _post(form, data):
    return APIClient().post(f"/api/v1/capture/{form.key}", data, format="json")


@pytest.mark.parametrize("stage_key", STAGE_KEYS)
def test_hostile_submission_changes_nothing_stored_in_any_stage(stage_key):
    form = _form(stage="subscriber")
    lead = _customer(stage_key)
    before = _snapshot(lead)
    payload = {"email": " CARLA@acme.com ", **{k.replace(".", "_"): v for k, v in HOSTILE.items()}}
    res = _post(form, payload)
    assert (res.status_code, res.json()) == (202, RECEIVED)
    after = _snapshot(lead)
    # Only the touch fields (the submission is a touch) may move.
    touch = {k for k in before if k.startswith(("first_", "latest_", "original_source")) and k not in ("first_name",)}
    assert {k: v for k, v in after.items() if k not in touch} == {k: v for k, v in before.items() if k not in touch}
    event = Event.objects.get(kind="form")
    expected = {k: v for k, v in HOSTILE.items()}
    if STAGE_KEYS.index(stage_key) > 0:
        expected["lifecycle_stage"] = "subscriber"
    assert event.properties["not_applied"] == expected
    assert "Submitted, not applied" in next(e.detail for e in lead_timeline(lead=lead) if e.kind == "event")


def test_submission_fills_only_empty_fields_and_moves_stage_forward():
    form = _form(stage="mql")
    lead = _customer("lead", first_name="", job_title="", region="")
    res = _post(form, {"email": "carla@acme.com", "first_name": "Carla", "job_title": "CFO", "region": "Bay Area", "company_name": "Evil"})
    assert res.json() == RECEIVED
    lead.refresh_from_db()
    assert (lead.first_name, lead.job_title, lead.region, lead.company_name) == ("Carla", "CFO", "Bay Area", "Acme")
    assert lead.lifecycle_stage.key == "mql"  # forward: applied
    assert Event.objects.get(kind="form").properties["not_applied"] == {"company_name": "Evil"}


def test_known_and_unknown_emails_get_the_same_answer_and_honeypot_too():
    form = _form()
    _customer()
    known = _post(form, {"email": "carla@acme.com"})
    unknown = _post(form, {"email": "nobody@acme.com"})
    bot = _post(form, {"email": "carla@acme.com", "website": "http://spam"})
    assert [(r.status_code, r.json()) for r in (known, unknown, bot)] == [(202, RECEIVED)] * 3


def test_public_upsert_never_finds_or_sets_a_lead_by_crm_id():
    lead = _customer()
    unapplied: dict = {}
    other, created = lead_upsert(
        data={"email": "new@acme.com", "hubspot_id": "hs-1"}, source="form:x", public=True, unapplied=unapplied
    )
    assert created and other.pk != lead.pk and other.hubspot_id is None
    assert unapplied == {"hubspot_id": "hs-1"}


def test_a_form_cannot_map_or_default_crm_ids():
    email = form_field("email", "email")
    for bad in ({"fields": [email, form_field("hs", "hubspot_id")]}, {"defaults": {"salesforce_lead_id": "00Q1"}}):
        form = FormFactory.build(**{"fields": [email], **bad})
        with pytest.raises(ValidationError) as exc:
            form.full_clean(exclude=["event_type"])
        (field, messages), = exc.value.message_dict.items()
        assert field in bad and "cannot set CRM ids" in messages[0]


stored_values = st.fixed_dictionaries({k: st.sampled_from([STORED[k], ""]) for k in HOSTILE if not k.startswith("properties.")})
submitted = st.dictionaries(st.sampled_from(sorted(HOSTILE)), st.just(None)).map(lambda d: {k: HOSTILE[k] for k in d})


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=stored_values, sent=submitted, stage=st.sampled_from(STAGE_KEYS), form_stage=st.sampled_from(STAGE_KEYS))
def test_property_every_field_is_filled_only_when_empty(stored, sent, stage, form_stage):
    Lead.objects.filter(email="carla@acme.com").delete()
    lead = _customer(stage, **stored)
    before = _snapshot(lead)
    unapplied: dict = {}
    lead_upsert(
        data={"email": "carla@acme.com", "lifecycle_stage": form_stage, **sent},
        source="form:prop",
        public=True,
        unapplied=unapplied,
    )
    after = _snapshot(lead)
    for name, value in sent.items():
        if name.startswith("properties."):
            assert after["properties"]["plan"] == "enterprise"
            continue
        expected = value if before[name] in ("", None) else before[name]
        assert after[name] == expected, name
        assert (name in unapplied) == (before[name] not in ("", None) and before[name] != value)
    for name in ("owner_id", "total_score", "fit_score", "engagement_score", *CRM_KEYS):
        assert after[name] == before[name]
    order = {s.pk: s.order for s in LifecycleStage.objects.all()}
    assert order[after["lifecycle_stage_id"]] >= order[before["lifecycle_stage_id"]]


def test_a_form_cannot_let_the_visitor_choose_the_stage():
    email = form_field("email", "email")
    for kind in ("text", "hidden"):
        form = FormFactory.build(fields=[email, form_field("stage", "lifecycle_stage", type=kind)])
        with pytest.raises(ValidationError) as exc:
            form.full_clean(exclude=["event_type"])
        assert "cannot choose the lifecycle stage" in exc.value.message_dict["fields"][0]


def test_a_stage_field_saved_before_the_rule_is_not_applied_the_defaults_are():
    form = _form(stage="mql")
    # Saved before the rule (a row update skips the model's validation).
    type(form).objects.filter(pk=form.pk).update(
        fields=[*form.fields, {**form_field("stage", "lifecycle_stage", type="hidden"), "policy": "overwrite"}])
    form.refresh_from_db()
    lead = _customer("lead")
    res = _post(form, {"email": "carla@acme.com", "stage": "customer"})
    assert (res.status_code, res.json()) == (202, RECEIVED)
    lead.refresh_from_db()
    assert lead.lifecycle_stage.key == "mql"  # the form's own stage, not the visitor's
