"""The journey builder in the admin, as a Marketing Ops user (not a
superuser): step forms with pickers, the diagram, trigger pickers, warnings,
publish and the status buttons; an Analyst only looks."""
from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse

from nurture.models import Workflow
from tests.nurture.conftest import email_flow

pytestmark = pytest.mark.django_db

SETTINGS = {"trigger": "manual", "reenroll": "never", "suppress_unsubscribed": "on", "in_doubt_policy": "hold",
            "in_doubt_minutes": "60"}


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.fixture
def ops(client, marketing_ops):
    client.force_login(marketing_ops)
    return client


def _add(client, wf, step_type, position, **data):
    return client.post(reverse("admin:nurture_workflow_step_add", args=[wf.pk]),
                       {"type": step_type, "position": position, **data})


def test_change_page_shows_the_diagram_the_steps_and_where_to_add(ops, make_workflow):
    wf = make_workflow(email_flow(2), publish=False)
    page = ops.get(reverse("admin:nurture_workflow_change", args=[wf.pk])).content.decode()
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="nurture-diagram"' in page
    assert page.count('class="nurture-node"') == 3
    assert reverse("admin:nurture_workflow_step_edit", args=[wf.pk, "e2"]) in page
    assert '<option value="e2:next" selected>After “e2” (send email)</option>' in page
    assert '<option value="branch">Branch (yes/no)</option>' in page
    assert 'name="definition"' not in page and 'name="status"' not in page  # neither typed nor picked here


def test_build_a_journey_through_the_step_forms(ops):
    r = ops.post(reverse("admin:nurture_workflow_add"), {**SETTINGS, "name": "Built"})
    assert r.status_code == 302
    wf = Workflow.objects.get(name="Built")

    form = ops.get(reverse("admin:nurture_workflow_step_add", args=[wf.pk]), {"type": "send_email", "position": "start"})
    assert form.status_code == 200 and 'name="subject"' in form.content.decode()
    r = _add(ops, wf, "send_email", "start", subject="Your ebook", body="Here it is", marketing="on")
    assert r.status_code == 302 and "Added the step “email1” (Send email)." in _messages(r)
    r = _add(ops, wf, "wait", "email1:next", amount="3", unit="business_days")
    assert r.status_code == 302
    r = _add(ops, wf, "wait", "wait1:next", amount="90", unit="minutes")
    r = _add(ops, wf, "branch", "wait2:next", condition="score >= 50")
    r = _add(ops, wf, "set_stage", "branch1:yes", stage="sql")
    r = _add(ops, wf, "wait_until", "branch1:no", event="webinar_attended", timeout="2", timeout_unit="days",
             path_timeout_next="end")
    assert r.status_code == 302, r.content.decode()
    wf.refresh_from_db()
    steps = wf.definition["steps"]
    assert wf.definition["start"] == "email1"
    assert steps["email1"] == {"type": "send_email", "subject": "Your ebook", "body": "Here it is", "next": "wait1"}
    assert steps["wait1"] == {"type": "wait", "business_days": 3, "next": "wait2"}
    assert steps["wait2"] == {"type": "wait", "seconds": 5400, "next": "branch1"}
    assert steps["branch1"] == {"type": "branch", "condition": "score >= 50", "yes": "stage1", "no": "wait_until1"}
    assert steps["stage1"] == {"type": "set_stage", "stage": "sql", "next": "end"}
    assert steps["wait_until1"] == {"type": "wait_until", "event": "webinar_attended", "timeout_hours": 48,
                                    "next": "end", "timeout_next": "end"}
    assert wf.has_draft_changes and wf.status == "draft"

    # Edit, move and delete.
    edit = ops.get(reverse("admin:nurture_workflow_step_edit", args=[wf.pk, "wait1"])).content.decode()
    assert 'value="3"' in edit and '<option value="business_days" selected>' in edit
    r = ops.post(reverse("admin:nurture_workflow_step_edit", args=[wf.pk, "wait1"]),
                 {"amount": "2", "unit": "days", "path_next": "wait2"})
    assert r.status_code == 302
    r = ops.post(reverse("admin:nurture_workflow_step_move", args=[wf.pk, "wait2"]), {"direction": "up"})
    assert r.status_code == 302
    wf.refresh_from_db()
    assert wf.definition["steps"]["email1"]["next"] == "wait2" and wf.definition["steps"]["wait2"]["next"] == "wait1"
    assert wf.definition["steps"]["wait1"] == {"type": "wait", "days": 2, "next": "branch1"}
    assert "Delete the step “stage1”" in ops.get(
        reverse("admin:nurture_workflow_step_delete", args=[wf.pk, "stage1"])).content.decode()
    r = ops.post(reverse("admin:nurture_workflow_step_delete", args=[wf.pk, "stage1"]))
    wf.refresh_from_db()
    assert "stage1" not in wf.definition["steps"] and wf.definition["steps"]["branch1"]["yes"] == "end"

    # Publish from the page.
    r = ops.post(reverse("admin:nurture_workflow_publish", args=[wf.pk]))
    assert "Published version 1; the journey is active." in _messages(r)
    wf.refresh_from_db()
    assert wf.status == "active" and wf.current_version.definition == wf.definition


def test_step_forms_offer_only_what_exists_and_name_the_bad_field(ops, make_workflow):
    wf = make_workflow(email_flow(1), publish=False)
    page = ops.get(reverse("admin:nurture_workflow_step_add", args=[wf.pk]),
                   {"type": "wait_until", "position": "e1:next"}).content.decode()
    assert '<option value="webinar_attended">Webinar attended (webinar_attended)</option>' in page
    assert '<option value="ebook_downloaded">Ebook downloaded (ebook_downloaded)</option>' in page
    r = _add(ops, wf, "wait_until", "e1:next", event="webinar_atended", timeout="1", timeout_unit="hours")
    assert r.status_code == 200
    body = r.content.decode()
    assert "Select a valid choice. webinar_atended is not one of the available choices." in body
    r = _add(ops, wf, "wait_until", "e1:next", event="", condition="", timeout="1", timeout_unit="hours")
    assert "Give the event to wait for, or a condition (or both)." in r.content.decode()
    r = _add(ops, wf, "set_stage", "e1:next", stage="vip")
    assert "Select a valid choice. vip is not one of the available choices." in r.content.decode()
    r = _add(ops, wf, "split", "e1:next", percent="101")
    assert "Ensure this value is less than or equal to 100." in r.content.decode()
    page = ops.get(reverse("admin:nurture_workflow_step_add", args=[wf.pk]),
                   {"type": "update_field", "position": "e1:next"}).content.decode()
    assert '<option value="job_title">Job title</option>' in page and 'value="email"' not in page
    r = _add(ops, wf, "update_field", "e1:next", field="properties", property="", value="x")
    assert "Name the custom property." in r.content.decode()
    r = _add(ops, wf, "update_field", "e1:next", field="properties", property="9lives", value="x")
    assert "A custom property&#x27;s name" in r.content.decode()
    r = _add(ops, wf, "nonsense", "e1:next")
    assert r.status_code == 302 and any(m.startswith("type: choose a step type") for m in _messages(r))
    wf.refresh_from_db()
    assert wf.definition == email_flow(1)


def test_trigger_and_goal_are_picked_and_a_never_firing_one_is_warned_then_refused(ops, make_workflow):
    wf = make_workflow(email_flow(1), publish=False, trigger="event", trigger_config={"event": "ebok_downloaded"})
    page = ops.get(reverse("admin:nurture_workflow_change", args=[wf.pk])).content.decode()
    # The stored (uncatalogued) value is shown as itself and marked, not replaced.
    assert '<option value="ebok_downloaded" selected>ebok_downloaded (not in the catalog: never fires)</option>' in page
    assert "&#x27;ebok_downloaded&#x27; is not in the event catalog" in page
    r = ops.post(reverse("admin:nurture_workflow_change", args=[wf.pk]),
                 {**SETTINGS, "name": wf.name, "trigger": "event", "trigger_event": "ebok_downloaded",
                  "goal_event": "demo_requested"})
    assert r.status_code == 302
    assert any("is not in the event catalog" in m for m in _messages(r))
    r = ops.post(reverse("admin:nurture_workflow_publish", args=[wf.pk]))
    assert any(m.startswith("Not published: trigger_config: The event type 'ebok_downloaded'") for m in _messages(r))
    wf.refresh_from_db()
    assert wf.status == "draft" and wf.current_version is None and wf.goal_event == "demo_requested"
    ops.get(reverse("admin:nurture_workflow_changelist"))  # shows (and so clears) the messages so far

    r = ops.post(reverse("admin:nurture_workflow_change", args=[wf.pk]),
                 {**SETTINGS, "name": wf.name, "trigger": "event", "trigger_event": "ebook_downloaded",
                  "trigger_condition": "properties.pages >= 2", "status": "archived"})
    assert r.status_code == 302 and not [m for m in _messages(r) if "catalog" in m]
    wf.refresh_from_db()
    assert wf.trigger_config == {"event": "ebook_downloaded", "condition": "properties.pages >= 2"}
    assert wf.status == "draft"  # the posted status is not a field
    r = ops.post(reverse("admin:nurture_workflow_change", args=[wf.pk]),
                 {**SETTINGS, "name": wf.name, "trigger": "form", "trigger_form": ""})
    assert r.status_code == 200 and "Required for a “Form submission” trigger." in r.content.decode()
    r = ops.post(reverse("admin:nurture_workflow_change", args=[wf.pk]),
                 {**SETTINGS, "name": wf.name, "trigger": "stage", "trigger_stage": "mql", "suppress_stages": ["customer"]})
    wf.refresh_from_db()
    assert wf.trigger_config == {"stage": "mql"} and wf.suppress_stages == ["customer"]


def test_status_changes_by_the_buttons_only(ops, make_workflow):
    wf = make_workflow(email_flow(1))
    page = ops.get(reverse("admin:nurture_workflow_change", args=[wf.pk])).content.decode()
    assert 'value="pause"' in page and 'value="resume"' not in page
    ops.post(reverse("admin:nurture_workflow_status", args=[wf.pk]), {"action": "pause"})
    wf.refresh_from_db()
    assert wf.status == "paused"
    r = ops.post(reverse("admin:nurture_workflow_status", args=[wf.pk]), {"action": "pause"})
    assert "status: Cannot pause a workflow that is paused." in _messages(r)
    ops.post(reverse("admin:nurture_workflow_status", args=[wf.pk]), {"action": "resume"})
    wf.refresh_from_db()
    assert wf.status == "active"


def test_analyst_sees_the_journey_but_cannot_change_it(client, analyst, make_workflow):
    wf = make_workflow(email_flow(1), publish=False)
    client.force_login(analyst)
    page = client.get(reverse("admin:nurture_workflow_change", args=[wf.pk])).content.decode()
    assert 'class="nurture-diagram"' in page and "journey-add" not in page
    assert reverse("admin:nurture_workflow_step_edit", args=[wf.pk, "e1"]) not in page
    for url, data in [
        (reverse("admin:nurture_workflow_step_add", args=[wf.pk]), {"type": "wait", "position": "start", "amount": "1", "unit": "days"}),
        (reverse("admin:nurture_workflow_step_delete", args=[wf.pk, "e1"]), {}),
        (reverse("admin:nurture_workflow_publish", args=[wf.pk]), {}),
        (reverse("admin:nurture_workflow_status", args=[wf.pk]), {"action": "archive"}),
    ]:
        r = client.post(url, data)
        assert r.status_code == 302 and any("“Can change workflow” permission" in m for m in _messages(r))
    wf.refresh_from_db()
    assert wf.definition == email_flow(1) and wf.status == "draft"


@pytest.mark.parametrize("step_type", ["send_email", "send_sms", "audience_add", "audience_remove", "update_field",
                                       "set_stage", "create_task", "notify", "webhook", "wait", "wait_until",
                                       "branch", "split", "enroll", "end"])
def test_every_step_type_has_a_form(ops, make_workflow, step_type):
    from nurture.graph import TARGETS

    wf = make_workflow(email_flow(1), publish=False)
    r = ops.get(reverse("admin:nurture_workflow_step_add", args=[wf.pk]), {"type": step_type, "position": "e1:next"})
    assert r.status_code == 200 and 'id="step-form"' in r.content.decode()
    for path in TARGETS[step_type]:
        assert f'name="path_{path}"' in r.content.decode()


def test_an_unknown_position_is_refused(ops, make_workflow):
    wf = make_workflow(email_flow(1), publish=False)
    r = _add(ops, wf, "wait", "bogus", amount="1", unit="days")
    assert r.status_code == 302 and "position: 'bogus' is not a place in this journey." in _messages(r)
    r = _add(ops, wf, "wait", "ghost:next", amount="1", unit="days")
    assert r.status_code == 200 and "after: No step &#x27;ghost&#x27; in this journey." in r.content.decode()
    wf.refresh_from_db()
    assert wf.definition == email_flow(1)


def test_the_send_email_form_picks_a_saved_template(ops, make_workflow):
    from tests.nurture.test_email_templates import make_template

    template = make_template(name="Ebook delivery", subject="Your ebook")
    wf = make_workflow(email_flow(1), publish=False)
    form = ops.get(reverse("admin:nurture_workflow_step_add", args=[wf.pk]), {"type": "send_email", "position": "e1:next"})
    assert f'<option value="{template.pk}">Ebook delivery</option>' in form.content.decode()

    r = _add(ops, wf, "send_email", "e1:next", template=str(template.pk), subject="Typed too", marketing="on")
    assert r.status_code == 200 and "leave subject empty" in r.content.decode()  # refused, on the form
    r = _add(ops, wf, "send_email", "e1:next", template=str(template.pk), marketing="on")
    assert r.status_code == 302
    wf.refresh_from_db()
    assert wf.definition["steps"]["email1"] == {"type": "send_email", "template": template.pk, "next": "end"}
    page = ops.get(reverse("admin:nurture_workflow_change", args=[wf.pk])).content.decode()
    assert "Your ebook" in page  # the template's subject in the step table and the diagram
