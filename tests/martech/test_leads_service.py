import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection

from martech.models import Event, Identity, Lead, StageTransition
from martech.selectors import lead_consent_state
from martech.services.leads import consent_record, identity_link, lead_change_stage, lead_merge, lead_upsert
from tests.factories import AccountFactory, EventFactory, LeadFactory

pytestmark = pytest.mark.django_db


def test_email_is_normalized_and_deduplicated():
    lead, created = lead_upsert(data={"email": "  Ann@X.com ", "first_name": "Ann"}, source="test")
    again, created_again = lead_upsert(data={"email": "ann@x.com", "job_title": "CMO"}, source="test")
    assert created and not created_again
    assert again.pk == lead.pk
    assert Lead.objects.count() == 1
    lead.refresh_from_db()
    assert (lead.email, lead.first_name, lead.job_title) == ("ann@x.com", "Ann", "CMO")


def test_database_refuses_unnormalized_email():
    with pytest.raises(IntegrityError):
        Lead.objects.create(email="Bob@X.com")


def test_blank_values_do_not_clear_and_properties_merge():
    lead, _ = lead_upsert(data={"email": "a@b.co", "first_name": "Al", "properties.plan": "pro"}, source="t")
    lead_upsert(data={"email": "a@b.co", "first_name": "", "properties": {"seats": 5}}, source="t")
    lead.refresh_from_db()
    assert lead.first_name == "Al"
    assert lead.properties == {"plan": "pro", "seats": 5}


def test_bad_fields_are_named():
    with pytest.raises(ValidationError) as exc:
        lead_upsert(data={"email": "not-an-email", "phone": "12", "country": "USA", "nope": 1}, source="t")
    assert set(exc.value.message_dict) == {"email", "phone", "country", "nope"}
    assert Lead.objects.count() == 0


def test_phone_is_stored_as_e164():
    lead, _ = lead_upsert(data={"email": "p@q.de", "phone": "030 901820", "country": "DE"}, source="t")
    lead.refresh_from_db()
    assert str(lead.phone) == "+4930901820"


def test_new_lead_gets_default_stage_with_history():
    lead, _ = lead_upsert(data={"email": "s@t.io"}, source="form:x")
    assert lead.lifecycle_stage.key == "lead"
    t = StageTransition.objects.get(lead=lead)
    assert t.from_stage is None and t.to_stage.key == "lead" and t.source == "form:x"


def test_stage_change_writes_one_transition_and_is_idempotent(marketing_ops):
    lead = LeadFactory()
    first = lead_change_stage(lead=lead, to_stage="mql", reason="score", actor=marketing_ops)
    second = lead_change_stage(lead=lead, to_stage="mql", reason="score", actor=marketing_ops)
    assert first is not None and second is None
    assert first.actor == marketing_ops and first.from_stage.key == "lead"
    lead.refresh_from_db()
    assert lead.lifecycle_stage.key == "mql"
    with pytest.raises(ValidationError):
        lead_change_stage(lead=lead, to_stage="nope", reason="x")


def test_lead_is_linked_to_account_by_domain_but_not_free_mail():
    acc = AccountFactory(domain="acme.com", name="Acme")
    lead, _ = lead_upsert(data={"email": "jo@acme.com"}, source="t")
    gmail, _ = lead_upsert(data={"email": "jo@gmail.com"}, source="t")
    assert lead.account == acc and lead.company_name == "Acme"
    assert gmail.account is None


def test_consent_derives_from_latest_record():
    lead = LeadFactory()
    assert lead_consent_state(lead=lead)["email"] is None
    consent_record(lead=lead, channel="email", granted=True, source="form:x", evidence={"text": "ok"})
    consent_record(lead=lead, channel="sms", granted=True, source="form:x")
    consent_record(lead=lead, channel="email", granted=False, source="unsubscribe")
    state = lead_consent_state(lead=lead)
    assert state["email"] == "withdrawn" and state["sms"] == "granted" and state["ads"] is None


def test_identity_link_attaches_anonymous_events():
    anon_events = [EventFactory(lead=None, anonymous_id="anon-1") for _ in range(3)]
    other = EventFactory(lead=None, anonymous_id="anon-2")
    lead = LeadFactory()
    identity_link(lead=lead, kind=Identity.Kind.ANONYMOUS, value="anon-1")
    identity_link(lead=lead, kind=Identity.Kind.ANONYMOUS, value="anon-1")  # idempotent
    assert set(lead.events.values_list("pk", flat=True)) == {e.pk for e in anon_events}
    other.refresh_from_db()
    assert other.lead is None
    assert Identity.objects.filter(value="anon-1").count() == 1


def test_merge_moves_history_and_frees_unique_keys():
    primary = LeadFactory(email="a@m.io", job_title="")
    dup = LeadFactory(email="b@m.io", job_title="CTO", hubspot_id="77")
    EventFactory(lead=dup)
    consent_record(lead=dup, channel="email", granted=True, source="t")
    merged = lead_merge(primary=primary, duplicate=dup)
    assert not Lead.objects.filter(pk=dup.pk).exists()
    assert merged.job_title == "CTO" and merged.hubspot_id == "77"
    assert Event.objects.filter(lead=merged).count() == 1
    assert lead_consent_state(lead=merged)["email"] == "granted"
    assert merged.properties["_merged_from"][0]["email"] == "b@m.io"


def test_lead_set_owner_changes_once_and_runs_hooks(monkeypatch):
    from martech import hooks
    from martech.services.leads import lead_set_owner
    from tests.factories import LeadFactory, UserFactory

    seen = []
    monkeypatch.setattr(hooks, "_lead_hooks", [lambda **kw: seen.append((kw["ids"], kw["fields"]))])
    lead, rep = LeadFactory(), UserFactory(username="rep")
    assert lead_set_owner(lead=lead, owner=rep, reason="routed", source="routing") is True
    assert lead_set_owner(lead=lead, owner=rep.pk, reason="routed", source="routing") is False
    lead.refresh_from_db()
    assert lead.owner == rep and seen == [([lead.pk], frozenset({"owner"}))]


def test_merge_moves_rows_of_later_apps_and_drops_their_duplicates():
    from attribution.models import OpportunityContactRole
    from attribution.services import opportunity_set_contact, opportunity_upsert

    primary, dup = LeadFactory(), LeadFactory()
    shared, only_dup = (opportunity_upsert(data={"name": n}, source="t")[0] for n in ("Shared", "Dup's"))
    opportunity_set_contact(opportunity=shared, lead=primary, role="buyer")
    opportunity_set_contact(opportunity=shared, lead=dup, role="user")
    opportunity_set_contact(opportunity=only_dup, lead=dup, role="champion")
    lead_merge(primary=primary, duplicate=dup)
    roles = set(OpportunityContactRole.objects.values_list("opportunity__name", "lead", "role"))
    assert roles == {("Shared", primary.pk, "buyer"), ("Dup's", primary.pk, "champion")}


def test_a_new_lead_is_written_once_and_announced_as_a_stage_move_then_a_creation(
        monkeypatch, django_capture_on_commit_callbacks, django_assert_num_queries):
    from martech import hooks, signals

    heard, changed = [], []
    monkeypatch.setattr(hooks, "leads_changed", lambda **kw: changed.append(kw))
    stage_rx = lambda sender, lead, transition, **kw: heard.append(("stage", lead.pk, transition.reason))  # noqa: E731
    created_rx = lambda sender, lead, **kw: heard.append(("created", lead.pk))  # noqa: E731
    signals.lead_stage_changed.connect(stage_rx)
    signals.lead_created.connect(created_rx)
    try:
        lead_upsert(data={"email": "warm@x.com"}, source="t")  # the configuration caches' first reads
        heard.clear()
        changed.clear()
        with django_capture_on_commit_callbacks(execute=True), \
                django_assert_num_queries(12 if connection.vendor == "postgresql" else 11):
            # Its savepoint, the look-up, (the advisory lock), the account, the
            # insert in its savepoint (with the stage), the transition; outside
            # a snapshot each cached configuration costs its token (tombstones
            # twice, stages): no lock, no UPDATE, no savepoint for the stage.
            lead, created = lead_upsert(data={"email": "new@x.com"}, source="t")
    finally:
        signals.lead_stage_changed.disconnect(stage_rx)
        signals.lead_created.disconnect(created_rx)
    assert created and heard == [("stage", lead.pk, "created"), ("created", lead.pk)]
    assert [kw.get("created") for kw in changed] == [True]  # one hook call: every field, the stage too
    (transition,) = StageTransition.objects.filter(lead=lead)
    assert (transition.from_stage_id, transition.to_stage.key, transition.changed_at) == (None, "lead", lead.created_at)
    assert Lead.objects.get(pk=lead.pk).lifecycle_stage.key == "lead"
