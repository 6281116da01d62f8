"""Email templates (issue 18 item 2): validation, rendering (fallbacks,
conditional blocks, escaping, the sandbox), the admin's preview and test
send as non-superusers, send-email steps naming a template, the snapshot a
publish takes, the gallery's templates and the REST API (SQLite and PostgreSQL)."""
from __future__ import annotations

import pytest
import yaml
from django.core import mail
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from martech.models import Lead
from nurture import channels
from nurture.engine import enrollments_advance_due
from nurture.gallery import workflow_create_from_gallery
from nurture.models import EmailTemplate, Message, Workflow
from nurture.services import (
    email_template_save,
    enrollment_create,
    workflow_publish,
    workflow_save,
    workflow_test_run,
)
from tests.factories import AccountFactory, LeadFactory, UserFactory
from tests.martech.api_support import *  # noqa: F403 (fixtures)
from tests.martech.api_support import error_fields

pytestmark = pytest.mark.django_db

HTML = ('<p>Hi {{first_name|there}},</p>{{#if score >= 50}}<p>Talk to sales: https://example.com/demo</p>'
        '{{else}}<p><a href="https://example.com/guide">Read the guide</a> &amp; more</p>{{/if}}')


def make_template(**fields) -> EmailTemplate:
    values = {"name": "Welcome", "subject": "Welcome, {{first_name|friend}}", "preheader": "For {{company_name|you}}",
              "html_body": HTML, **fields}
    return email_template_save(template=EmailTemplate(**values))


def template_flow(template_id: int) -> dict:
    return {"start": "e1", "steps": {"e1": {"type": "send_email", "template": template_id, "next": "end"},
                                     "end": {"type": "end"}}}


# --- validation --------------------------------------------------------------------------
@pytest.mark.parametrize("field, text, reason", [
    ("subject", "Hi {{frist_name}}", "column 4: unknown merge field 'frist_name'"),
    ("html_body", "<p>{{account.__class__}}</p>", "unknown merge field 'account.__class__'"),
    ("html_body", "<p>{{#if score >= 50}}hot</p>", "column 4: {{#if}} is never closed with {{/if}}"),
    ("html_body", "a\n{{else}}", "line 2, column 1: {{else}} outside an {{#if}} block"),
    ("text_body", "{{/if}}", "column 1: {{/if}} without an {{#if}}"),
    ("preheader", "{{#if score >> 3}}x{{/if}}", "column 1: {{#if}} condition: column"),
    ("text_body", "{{ first name }}", "is neither a merge field nor an {{#if}}/{{else}}/{{/if}} tag"),
    ("subject", "", "Required."),
])
def test_saving_names_the_field_and_the_reason(field, text, reason):
    with pytest.raises(ValidationError) as exc:
        make_template(**{field: text})
    assert any(reason in m for m in exc.value.message_dict[field]), exc.value.message_dict
    assert not EmailTemplate.objects.exists()


def test_every_field_of_the_condition_language_is_a_merge_field():
    t = make_template(subject="{{score}} {{email_domain}} {{account.name}} {{properties.plan|free}} {{lifecycle_stage}}")
    assert t.pk


def test_the_name_is_unique_with_a_clear_error():
    make_template()
    with pytest.raises(ValidationError) as exc:
        make_template()
    assert exc.value.message_dict["name"] == ["A template named 'Welcome' exists already."]


# --- rendering ------------------------------------------------------------------------------
def test_render_fallbacks_and_conditional_blocks():
    hot = LeadFactory(first_name="Ada", company_name="Acme", total_score=80)
    cold = LeadFactory(first_name="", company_name="", total_score=10)
    content = make_template().content()
    r = channels.render_email(content, hot)
    assert r["subject"] == "Welcome, Ada" and r["preheader"] == "For Acme"
    assert "Talk to sales" in r["html"] and "Read the guide" not in r["html"]
    r = channels.render_email(content, cold)
    assert r["subject"] == "Welcome, friend" and r["preheader"] == "For you"
    assert "Talk to sales" not in r["html"] and "Read the guide" in r["html"]
    # The text part is derived from the HTML: tags gone, entities decoded, links kept.
    assert r["text"] == "Hi there,\n\nRead the guide (https://example.com/guide) & more"
    # The preheader goes first in the HTML, hidden.
    assert r["html"].startswith('<div style="display:none;') and ">For you</div><p>Hi there" in r["html"]


def test_nested_blocks_else_and_a_text_body_given():
    lead = LeadFactory(country="US", total_score=90, account=AccountFactory(name="Initech"))
    text = ("{{#if country = \"US\"}}US {{#if score > 95}}top{{else}}{{account.name}}{{/if}}{{else}}elsewhere{{/if}}"
            " {{properties.plan|free}}")
    assert channels.render(text, lead) == "US Initech free"
    r = channels.render_email({"subject": "s", "html": "<b>html</b>", "text": text, "preheader": ""}, lead)
    assert r["text"] == "US Initech free" and r["html"] == "<b>html</b>"


def test_hostile_lead_data_is_escaped_and_never_rendered_again():
    lead = LeadFactory(first_name='<script>alert(1)</script>{{email}}', company_name="A\r\nBcc: x@evil.example")
    r = channels.render_email({"subject": "Hi {{first_name}} at {{company_name}}", "html": "<p>{{first_name}}</p>",
                               "text": "", "preheader": ""}, lead)
    assert "<script>" not in r["html"] and "&lt;script&gt;alert(1)&lt;/script&gt;{{email}}" in r["html"]
    assert lead.email not in r["html"]  # the value's "{{email}}" stays text
    assert "\n" not in r["subject"] and "\r" not in r["subject"]  # a header stays one line
    assert r["text"] == "<script>alert(1)</script>{{email}}"  # plain text: the value as it is


def test_no_attribute_outside_the_allowed_fields_is_reachable():
    owner = UserFactory(username="rep1", password="pw-Secret-123")
    lead = LeadFactory(owner=owner, account=AccountFactory())
    for path in ("owner.password", "account.__class__", "_state", "__dict__", "pk.__class__", "delete", "owner.email"):
        assert channels.render("{{" + path + "|-}}", lead) == "-", path
    assert channels.render("{{owner}}", lead) == "rep1"  # a user is named by username only


# --- the admin: preview and test send as non-superusers -------------------------------------
def _editor(**fields) -> dict:
    return {"subject": "Hi {{first_name|there}}", "preheader": "", "html_body": HTML, "text_body": "", **fields}


def test_change_page_shows_the_editor_preview_and_lead_picker(client, marketing_ops):
    t = make_template()
    client.force_login(marketing_ops)
    page = client.get(reverse("admin:nurture_emailtemplate_change", args=[t.pk])).content.decode()
    assert 'id="template-preview"' in page and 'sandbox=""' in page and "nurture/template_preview.js" in page
    assert 'id="id_preview_lead"' in page and "admin-autocomplete" in page and "Send a test to me" in page
    assert client.get(reverse("admin:nurture_emailtemplate_add")).status_code == 200
    # The picker's search answers through the admin's autocomplete for leads.
    lead = LeadFactory(email="ada@example.org")
    found = client.get(reverse("admin:autocomplete"), {"app_label": "nurture", "model_name": "message",
                                                        "field_name": "lead", "term": "ada@"}).json()
    assert [r["id"] for r in found["results"]] == [str(lead.pk)]


def test_preview_renders_unsaved_content_for_the_chosen_lead(client, marketing_ops):
    lead = LeadFactory(first_name="Grace", total_score=75)
    client.force_login(marketing_ops)
    url = reverse("admin:nurture_emailtemplate_preview")
    r = client.post(url, {**_editor(), "lead": lead.pk})
    assert r.status_code == 200
    body = r.json()
    assert body["subject"] == "Hi Grace" and "Talk to sales" in body["html"]
    assert not EmailTemplate.objects.exists()  # nothing saved
    empty = client.post(url, _editor()).json()  # no lead: every fallback shows
    assert empty["subject"] == "Hi there" and "Read the guide" in empty["html"]
    bad = client.post(url, {**_editor(subject="{{nope}}"), "lead": lead.pk})
    assert bad.status_code == 400 and "unknown merge field 'nope'" in bad.json()["errors"]["subject"][0]
    missing = client.post(url, {**_editor(), "lead": "999999"})
    assert missing.status_code == 400 and missing.json()["errors"]["lead"] == ["No lead with id '999999'."]
    assert client.get(url).status_code == 405


def test_preview_permissions(client, analyst, sales_ops):
    lead = LeadFactory(first_name="Grace")
    url = reverse("admin:nurture_emailtemplate_preview")
    client.force_login(analyst)  # reads everything: may preview, not send
    assert client.post(url, {**_editor(), "lead": lead.pk}).json()["subject"] == "Hi Grace"
    r = client.post(reverse("admin:nurture_emailtemplate_send_test"), _editor())
    assert r.status_code == 403 and not mail.outbox
    client.force_login(sales_ops)  # no nurture permissions
    assert client.post(url, _editor()).status_code == 403


def test_send_a_test_to_me_through_the_configured_backend(client, marketing_ops):
    t = make_template()
    lead = LeadFactory(first_name="Linus", total_score=5)
    client.force_login(marketing_ops)
    r = client.post(reverse("admin:nurture_emailtemplate_send_test"),
                    {**_editor(subject="Hello {{first_name}}"), "lead": lead.pk, "template": t.pk})
    assert r.status_code == 200 and r.json()["sent_to"] == marketing_ops.email
    [sent] = mail.outbox
    assert sent.to == [marketing_ops.email] and sent.subject == "[Test] Hello Linus"
    assert sent.extra_headers["X-Nurture-Test"] == "1" and "nurture_key" not in getattr(sent, "metadata", {})
    html = sent.alternatives[0][0]
    assert "Read the guide" in html and "/n/o/" not in html and "/n/u/" not in html  # no tracking, no message
    assert "Read the guide (https://example.com/guide)" in sent.body
    assert not Message.objects.exists()
    from django.contrib.admin.models import LogEntry

    assert LogEntry.objects.get(object_id=str(t.pk)).change_message == f"Sent a test to {marketing_ops.email}."


def test_send_test_without_an_email_address_says_so(client):
    user = UserFactory(username="noemail", email="", groups=["Marketing Ops"])
    client.force_login(user)
    r = client.post(reverse("admin:nurture_emailtemplate_send_test"), _editor())
    assert r.status_code == 400 and "no email address" in r.json()["errors"]["email"][0]
    assert not mail.outbox


def test_send_test_reports_the_backends_refusal(client, marketing_ops, settings):
    settings.EMAIL_BACKEND = "tests.nurture.test_email_templates.RefusingBackend"
    client.force_login(marketing_ops)
    r = client.post(reverse("admin:nurture_emailtemplate_send_test"), _editor())
    assert r.status_code == 502 and "refused by the test backend" in r.json()["errors"]["__all__"][0]


class RefusingBackend:
    def __init__(self, *args, **kwargs):
        pass

    def send_messages(self, messages):
        raise OSError("refused by the test backend")


def test_admin_add_shows_field_errors_and_saves_through_the_service(client, marketing_ops):
    client.force_login(marketing_ops)
    data = {"name": "New", **_editor(html_body="<p>{{#if score > 1}}x</p>")}
    r = client.post(reverse("admin:nurture_emailtemplate_add"), data)
    assert r.status_code == 200 and "never closed" in r.content.decode()
    r = client.post(reverse("admin:nurture_emailtemplate_add"), {**data, "html_body": HTML})
    assert r.status_code == 302
    assert EmailTemplate.objects.get().updated_by == marketing_ops


def test_a_template_a_draft_uses_cannot_be_deleted(client, marketing_ops):
    t = make_template()
    Workflow.objects.create(name="Uses it", definition=template_flow(t.pk))
    client.force_login(marketing_ops)
    page = client.get(reverse("admin:nurture_emailtemplate_delete", args=[t.pk])).content.decode()
    assert "Uses it" in page
    client.post(reverse("admin:nurture_emailtemplate_delete", args=[t.pk]), {"post": "yes"})
    assert EmailTemplate.objects.filter(pk=t.pk).exists()


# --- steps, publish, snapshot ------------------------------------------------------------
def test_definition_validation_names_the_step():
    t = make_template()
    wf = Workflow(name="x", definition=template_flow(999999))
    with pytest.raises(ValidationError) as exc:
        workflow_save(workflow=wf)
    assert "e1.template: no email template with id 999999." in exc.value.message_dict["definition"]
    both = template_flow(t.pk)
    both["steps"]["e1"]["subject"] = "Hi"
    wf.definition = both
    with pytest.raises(ValidationError) as exc:
        workflow_save(workflow=wf)
    assert "e1: give a template or subject, not both." in exc.value.message_dict["definition"]
    wf.definition = {"start": "e1", "steps": {"e1": {"type": "send_email", "subject": "{{nope}}", "body": "b",
                                                     "next": "end"}, "end": {"type": "end"}}}
    with pytest.raises(ValidationError) as exc:
        workflow_save(workflow=wf)
    assert any(m.startswith("e1.subject: column 1: unknown merge field 'nope'") for m in exc.value.message_dict["definition"])
    # Every field rendered for a lead is checked the same way (SMS, tasks, blocks).
    wf.definition = {"start": "s", "steps": {
        "s": {"type": "send_sms", "body": "{{#if score > 1}}hi", "next": "t"},
        "t": {"type": "create_task", "subject": "Call {{emial}}", "next": "e"},
        "e": {"type": "send_email", "template": t.pk, "blocks": [{"text": "{{/if}}"}], "next": "end"},
        "end": {"type": "end"}}}
    with pytest.raises(ValidationError) as exc:
        workflow_save(workflow=wf)
    found = exc.value.message_dict["definition"]
    assert "s.body: column 1: {{#if}} is never closed with {{/if}}." in found
    assert any(m.startswith("t.subject: column 6: unknown merge field 'emial'") for m in found)
    assert "e.blocks: column 1: {{/if}} without an {{#if}}." in found
    wf.definition = template_flow(t.pk)
    workflow_save(workflow=wf)


def test_publish_snapshots_templates_and_the_engine_renders_the_snapshot(make_workflow, consenting_lead):
    t = make_template(subject="Version one, {{first_name|friend}}")
    wf = make_workflow(template_flow(t.pk))
    v1 = wf.current_version
    assert v1.templates == {str(t.pk): t.content()}
    t.subject = "Version two, {{first_name|friend}}"
    email_template_save(template=t)
    # A running journey keeps what was published ...
    lead = consenting_lead(first_name="Ada")
    enrollment_create(workflow=wf, lead=lead, source="t")
    enrollments_advance_due(now=timezone.now())
    assert [m.subject for m in mail.outbox] == ["Version one, Ada"]
    assert Message.objects.get().execution.detail["template"] == t.pk
    # ... a test run of the draft renders the template as it is now ...
    rows = workflow_test_run(workflow=wf, lead=lead)
    assert rows[0]["message"]["subject"] == "Version two, Ada"
    # ... of the published version, its snapshot; the next publish takes the edit.
    assert workflow_test_run(workflow=wf, lead=lead, use_draft=False)[0]["message"]["subject"] == "Version one, Ada"
    v2 = workflow_publish(workflow=wf)
    v1.refresh_from_db()
    assert v1.templates[str(t.pk)]["subject"].startswith("Version one")
    assert v2.templates[str(t.pk)]["subject"].startswith("Version two")


def test_deleting_an_unused_template_leaves_running_versions_sending(make_workflow, consenting_lead):
    t = make_template()
    wf = make_workflow(template_flow(t.pk))
    wf.definition = {"start": "end", "steps": {"end": {"type": "end"}}}
    workflow_save(workflow=wf)  # the draft no longer names it
    enrollment_create(workflow=wf, lead=consenting_lead(first_name="Ada"), source="t")
    from nurture.services import email_template_delete

    email_template_delete(template=t)
    enrollments_advance_due(now=timezone.now())
    assert [m.subject for m in mail.outbox] == ["Welcome, Ada"]


def test_gallery_journeys_send_through_templates():
    wf = workflow_create_from_gallery(key="ebook_drip")
    emails = [s for s in wf.definition["steps"].values() if s["type"] == "send_email"]
    assert len(emails) == 3 and all("template" in s and "subject" not in s for s in emails)
    first = EmailTemplate.objects.get(pk=emails[0]["template"])
    assert first.name == "Ebook drip: Your ebook, {{first_name|there}}"
    assert '<a href="https://example.com/ebook">' in first.html_body
    again = workflow_create_from_gallery(key="ebook_drip")  # a second copy shares them
    assert EmailTemplate.objects.count() == 3 and again.definition["steps"]["e1"]["template"] == first.pk
    version = workflow_publish(workflow=wf)
    assert set(version.templates) == {str(s["template"]) for s in emails}


# --- API ----------------------------------------------------------------------------------
API = "/api/v1/nurture/email-templates"


def test_api_create_read_edit_and_errors(token_api):
    api = token_api("nurture:read", "nurture:write")
    r = api.post(API, {"name": "Api", "subject": "Hi {{first_name|there}}", "html_body": HTML}, format="json")
    assert r.status_code == 201, r.content
    pk = r.json()["id"]
    assert api.get(f"{API}/{pk}").json()["subject"] == "Hi {{first_name|there}}"
    assert [row["id"] for row in api.get(API).json()["results"]] == [pk]
    bad = api.patch(f"{API}/{pk}", {"html_body": "{{#if score > 1}}x"}, format="json")
    assert bad.status_code == 400 and error_fields(bad) == {"html_body"}
    assert "never closed" in bad.json()["error"]["fields"]["html_body"][0]
    assert error_fields(api.post(API, {"name": "Api", "subject": "s", "html_body": "h"}, format="json")) == {"name"}
    assert error_fields(api.patch(f"{API}/{pk}", {"subjet": "x"}, format="json")) == {"subjet"}
    assert api.patch(f"{API}/{pk}", {"subject": "New"}, format="json").json()["subject"] == "New"
    reader = token_api("nurture:read")
    assert reader.patch(f"{API}/{pk}", {"subject": "x"}, format="json").status_code == 403


def test_api_preview_needs_leads_read_for_a_lead(token_api):
    t = make_template()
    lead = LeadFactory(first_name="Ada", total_score=70)
    api = token_api("nurture:read", "leads:read")
    r = api.post(f"{API}/{t.pk}/preview", {"lead_id": lead.pk}, format="json")
    assert r.status_code == 200, r.content
    assert r.json()["subject"] == "Welcome, Ada" and "Talk to sales" in r.json()["html"]
    assert error_fields(api.post(f"{API}/{t.pk}/preview", {"lead_id": 999999}, format="json")) == {"lead_id"}
    no_leads = token_api("nurture:read")
    assert no_leads.post(f"{API}/{t.pk}/preview", {"lead_id": lead.pk}, format="json").status_code == 403
    assert no_leads.post(f"{API}/{t.pk}/preview", {}, format="json").json()["subject"] == "Welcome, friend"


def test_api_delete_refused_while_a_draft_uses_it(token_api):
    t = make_template()
    other = make_template(name="Other")
    Workflow.objects.create(name="Uses it", definition=template_flow(t.pk))
    api = token_api("nurture:read", "nurture:write")
    r = api.delete(f"{API}/{t.pk}")
    assert r.status_code == 400 and "Uses it" in r.json()["error"]["message"]
    assert api.delete(f"{API}/{other.pk}").status_code == 204
    assert list(EmailTemplate.objects.values_list("pk", flat=True)) == [t.pk]


def test_api_session_user_by_role(session_api, marketing_ops, analyst):
    t = make_template()
    assert session_api(analyst).patch(f"{API}/{t.pk}", {"subject": "x"}, format="json").status_code == 403
    assert session_api(analyst).post(f"{API}/{t.pk}/preview", {}, format="json").status_code == 200
    r = session_api(marketing_ops).patch(f"{API}/{t.pk}", {"subject": "Edited"}, format="json")
    assert r.status_code == 200 and EmailTemplate.objects.get().updated_by == marketing_ops


def test_api_schema_documents_templates(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    paths = yaml.safe_load(out.read_text())["paths"]
    assert {"/api/v1/nurture/email-templates/", "/api/v1/nurture/email-templates/{id}/",
            "/api/v1/nurture/email-templates/{id}/preview/"} <= set(paths)
    preview = paths["/api/v1/nurture/email-templates/{id}/preview/"]["post"]
    assert preview["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("PreviewInputRequest")
    assert {"200", "400", "403"} <= set(preview["responses"])


def test_empty_lead_renders_fallbacks():
    assert channels.render("{{first_name|there}} {{account.name|-}}", Lead()) == "there -"
