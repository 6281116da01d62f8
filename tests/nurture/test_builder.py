"""The journey builder's services (nurture.builder): add, edit, move and
delete steps of a workflow's draft; what can never fire; the diagram."""
from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.core.exceptions import ValidationError

from martech.models import EventType
from nurture.builder import workflow_step_add, workflow_step_delete, workflow_step_edit, workflow_step_move
from nurture.diagram import workflow_diagram
from nurture.labels import step_summary
from nurture.models import Workflow
from nurture.services import workflow_never_fires, workflow_publish, workflow_save
from tests.factories import FormFactory, UserFactory
from tests.nurture.conftest import email_flow

pytestmark = pytest.mark.django_db

EMAIL = {"subject": "Hi {{first_name|there}}", "body": "Welcome"}


def _errors(exc_info) -> dict[str, list[str]]:
    return exc_info.value.message_dict


@pytest.fixture
def draft(db):
    return Workflow.objects.create(name="draft")


def _chain(wf: Workflow) -> list[str]:
    """The step keys from the start along the first paths."""
    steps, key, out = wf.definition["steps"], wf.definition["start"], []
    while key:
        out.append(key)
        step = steps[key]
        key = step.get("next") or step.get("yes") or step.get("a")
    return out


def test_adding_to_an_empty_journey_starts_it_and_keeps_it_a_draft(draft):
    key = workflow_step_add(workflow=draft, step_type="send_email", data=EMAIL)
    assert key == "email1"
    draft.refresh_from_db()
    assert draft.definition == {"start": "email1", "steps": {
        "email1": {"type": "send_email", **EMAIL, "next": "end"}, "end": {"type": "end"}}}
    workflow_publish(workflow=draft)
    workflow_step_add(workflow=draft, step_type="wait", data={"days": 2}, after="email1")
    draft.refresh_from_db()
    assert draft.has_draft_changes and draft.status == "active"
    assert draft.current_version.definition["steps"]["email1"]["next"] == "end"  # the version did not move
    assert _chain(draft) == ["email1", "wait1", "end"]


def test_add_at_the_start_and_on_a_branch_path(make_workflow):
    wf = make_workflow(email_flow(1), publish=False)
    branch = workflow_step_add(workflow=wf, step_type="branch", data={"condition": "score >= 50"})
    assert wf.definition["start"] == branch
    assert wf.definition["steps"][branch] == {"type": "branch", "condition": "score >= 50", "yes": "e1", "no": "e1"}
    task = workflow_step_add(workflow=wf, step_type="create_task", data={"subject": "Call {{email}}", "due_days": 2},
                             after=branch, path="yes")
    steps = wf.definition["steps"]
    assert steps[branch]["yes"] == task and steps[branch]["no"] == "e1"
    assert steps[task] == {"type": "create_task", "subject": "Call {{email}}", "due_days": 2, "next": "e1"}
    split = workflow_step_add(workflow=wf, step_type="split", data={"percent": 30}, after=branch, path="no",
                              paths={"a": "end"})
    assert wf.definition["steps"][split] == {"type": "split", "percent": 30, "a": "end", "b": "e1"}


def test_add_refuses_a_bad_position_or_path(make_workflow):
    wf = make_workflow(email_flow(1), publish=False)
    with pytest.raises(ValidationError) as exc:
        workflow_step_add(workflow=wf, step_type="wait", data={"days": 1}, after="nope")
    assert _errors(exc) == {"after": ["No step 'nope' in this journey."]}
    with pytest.raises(ValidationError) as exc:
        workflow_step_add(workflow=wf, step_type="wait", data={"days": 1}, after="e1", path="yes")
    assert _errors(exc) == {"path": ["Step 'e1' has no path 'yes'."]}
    with pytest.raises(ValidationError) as exc:
        workflow_step_add(workflow=wf, step_type="branch", data={"condition": "score > 1"}, paths={"yes": "ghost"})
    assert _errors(exc) == {"yes": ["No step 'ghost' in this journey."]}
    wf.refresh_from_db()
    assert wf.definition == email_flow(1)


@pytest.mark.parametrize("step_type,data,field,words", [
    ("send_email", {"subject": "", "body": "x"}, "subject", "Required."),
    ("set_stage", {"stage": "vip"}, "stage", "No active lifecycle stage 'vip'."),
    ("wait_until", {"event": "webinar_atended", "timeout_hours": 24}, "event", "not an active event type"),
    ("wait_until", {"timeout_hours": 24}, "event", "Give the event to wait for, or a condition"),
    ("split", {"percent": 150}, "percent", "From 0 to 100."),
    ("branch", {"condition": "score >>= 5"}, "condition", ""),
    ("update_field", {"field": "email", "value": "x@y.z"}, "field", "not a lead field a journey may set"),
    ("update_field", {"field": "properties.9lives", "value": "x"}, "field", "custom property"),
    ("notify", {"channel": "email", "to": "not-an-address", "text": "x"}, "to", "An email address."),
    ("webhook", {"url": "ftp://example.com"}, "url", "An http(s) URL."),
    ("wait", {}, "__all__", "A wait needs a length"),
    ("wait", {"days": -1}, "days", "From 1 to"),
    ("enroll", {"workflow": 999999}, "workflow", "No workflow with id 999999"),
    ("send_sms", {"body": "x", "subject": "y"}, "__all__", "has no subject"),
])
def test_invalid_step_values_are_named_by_field_and_nothing_is_saved(make_workflow, step_type, data, field, words):
    wf = make_workflow(email_flow(1), publish=False)
    with pytest.raises(ValidationError) as exc:
        workflow_step_add(workflow=wf, step_type=step_type, data=data, after="e1")
    errors = _errors(exc)
    assert field in errors and words in " ".join(errors[field])
    wf.refresh_from_db()
    assert wf.definition == email_flow(1)


def test_catalogued_inactive_event_is_refused_for_wait_until(make_workflow):
    EventType.objects.filter(name="demo_requested").update(is_active=False)
    wf = make_workflow(email_flow(1), publish=False)
    with pytest.raises(ValidationError) as exc:
        workflow_step_add(workflow=wf, step_type="wait_until", data={"event": "demo_requested", "timeout_hours": 2})
    assert "event" in _errors(exc)
    key = workflow_step_add(workflow=wf, step_type="wait_until", data={"event": "webinar_attended", "timeout_hours": 2},
                            paths={"timeout_next": "end"})
    assert wf.definition["steps"][key] == {"type": "wait_until", "event": "webinar_attended", "timeout_hours": 2,
                                           "next": "e1", "timeout_next": "end"}


def test_edit_replaces_values_keeps_unmanaged_keys_and_repoints_paths(make_workflow):
    flow = email_flow(2)
    flow["steps"]["e1"]["blocks"] = [{"condition": "score > 5", "text": "VIP"}]
    wf = make_workflow(flow, publish=False)
    with pytest.raises(ValidationError) as exc:
        workflow_step_edit(workflow=wf, key="e1", data={"subject": "New", "body": "B", "marketing": False},
                           paths={"next": "end"})
    assert _errors(exc) == {"definition": ["unreachable steps: e2."]}  # refused as a whole
    wf.refresh_from_db()
    assert wf.definition == flow
    workflow_step_add(workflow=wf, step_type="branch", data={"condition": "score >= 1"}, after="e1")
    workflow_step_edit(workflow=wf, key="e1", data={"subject": "New", "body": "B", "marketing": False})
    assert wf.definition["steps"]["e1"] == {"type": "send_email", "subject": "New", "body": "B", "marketing": False,
                                            "blocks": [{"condition": "score > 5", "text": "VIP"}], "next": "branch1"}
    workflow_step_edit(workflow=wf, key="branch1", data={"condition": "score >= 10"}, paths={"no": "end"})
    assert wf.definition["steps"]["branch1"] == {"type": "branch", "condition": "score >= 10", "yes": "e2", "no": "end"}


def test_edit_refuses_a_loop_naming_the_definition(make_workflow):
    wf = make_workflow(email_flow(2), publish=False)
    with pytest.raises(ValidationError) as exc:
        workflow_step_edit(workflow=wf, key="e2", data={"subject": "s", "body": "b"}, paths={"next": "e1"})
    assert any("every path must end" in m for m in _errors(exc)["definition"])
    with pytest.raises(ValidationError) as exc:
        workflow_step_edit(workflow=wf, key="e2", data={"subject": "s", "body": "b"}, paths={"next": "e2"})
    assert _errors(exc) == {"next": ["A step cannot lead to itself."]}
    with pytest.raises(ValidationError) as exc:
        workflow_step_edit(workflow=wf, key="ghost", data={})
    assert _errors(exc) == {"step": ["No step 'ghost' in this journey."]}


def test_move_swaps_neighbours_on_a_straight_stretch(make_workflow):
    wf = make_workflow(email_flow(3), publish=False)
    workflow_step_move(workflow=wf, key="e2", direction="up")
    assert _chain(wf) == ["e2", "e1", "e3", "end"] and wf.definition["start"] == "e2"
    workflow_step_move(workflow=wf, key="e1", direction="down")
    assert _chain(wf) == ["e2", "e3", "e1", "end"]
    with pytest.raises(ValidationError) as exc:
        workflow_step_move(workflow=wf, key="e2", direction="up")  # already first
    assert "direction" in _errors(exc)
    with pytest.raises(ValidationError) as exc:
        workflow_step_move(workflow=wf, key="e1", direction="down")  # the End is not a one-path step
    assert "direction" in _errors(exc)
    with pytest.raises(ValidationError) as exc:
        workflow_step_move(workflow=wf, key="e1", direction="sideways")
    assert _errors(exc) == {"direction": ["up or down."]}


def test_move_refuses_a_branch_or_a_step_other_paths_lead_to(make_workflow):
    wf = make_workflow(email_flow(2), publish=False)
    workflow_step_add(workflow=wf, step_type="branch", data={"condition": "score > 1"}, after="e1")
    with pytest.raises(ValidationError) as exc:
        workflow_step_move(workflow=wf, key="branch1", direction="up")
    assert "one-path step" in _errors(exc)["direction"][0]
    with pytest.raises(ValidationError) as exc:
        workflow_step_move(workflow=wf, key="e2", direction="up")  # both arms of the branch lead to it
    assert "no single step before it" in _errors(exc)["direction"][0]


def test_delete_relinks_and_takes_a_branch_arm_with_it(make_workflow):
    wf = make_workflow(email_flow(3), publish=False)
    assert workflow_step_delete(workflow=wf, key="e2") == ["e2"]
    assert _chain(wf) == ["e1", "e3", "end"]
    workflow_step_add(workflow=wf, step_type="branch", data={"condition": "score > 1"}, after="e1")
    workflow_step_add(workflow=wf, step_type="send_sms", data={"body": "hi"}, after="branch1", path="no")
    assert workflow_step_delete(workflow=wf, key="branch1") == ["branch1", "sms1"]
    assert _chain(wf) == ["e1", "e3", "end"] and set(wf.definition["steps"]) == {"e1", "e3", "end"}
    assert workflow_step_delete(workflow=wf, key="e1") == ["e1"]
    assert wf.definition["start"] == "e3"
    with pytest.raises(ValidationError) as exc:
        workflow_step_delete(workflow=wf, key="end")
    assert "ends its path" in _errors(exc)["step"][0]


def test_changes_are_made_on_the_latest_draft_and_logged(make_workflow):
    wf = make_workflow(email_flow(1), publish=False)
    stale = Workflow.objects.get(pk=wf.pk)  # another person's page, loaded before the first change
    user = UserFactory(username="mops2", groups=["Marketing Ops"])
    workflow_step_add(workflow=wf, step_type="wait", data={"days": 1}, after="e1", actor=user)
    workflow_step_add(workflow=stale, step_type="send_sms", data={"body": "x"}, after="e1", actor=user)
    wf.refresh_from_db()
    assert _chain(wf) == ["e1", "sms1", "wait1", "end"]  # neither change lost
    logged = list(LogEntry.objects.filter(object_id=str(wf.pk)).values_list("change_message", flat=True))
    assert "Journey: added step 'wait1' (Wait) after 'e1' (Next)." in logged and len(logged) == 2


def test_saving_the_settings_keeps_steps_and_status_committed_meanwhile(make_workflow):
    wf = make_workflow(email_flow(1), publish=False)
    form_copy = Workflow.objects.get(pk=wf.pk)  # what the settings form read
    workflow_step_add(workflow=wf, step_type="wait", data={"days": 1}, after="e1")
    workflow_publish(workflow=wf)
    form_copy.name, form_copy.goal_event = "renamed", "demo_requested"
    workflow_save(workflow=form_copy, fields=["name", "goal_event"])
    wf.refresh_from_db()
    assert wf.name == "renamed" and wf.goal_event == "demo_requested" and wf.has_draft_changes
    assert _chain(wf) == ["e1", "wait1", "end"] and wf.status == "active" and wf.current_version.number == 1


def test_what_can_never_fire_and_what_publish_refuses(make_workflow):
    wf = make_workflow(email_flow(1), publish=False, trigger="event", trigger_config={"event": "ebok_downloaded"},
                       goal_event="demo_booked")
    problems = workflow_never_fires(workflow=wf)
    assert set(problems) == {"trigger_config", "goal_event"}
    assert "'ebok_downloaded' is not in the event catalog" in problems["trigger_config"][0]
    assert "the goal could never be met" in problems["goal_event"][0]
    workflow_save(workflow=wf)  # saving is allowed (the admin shows these as warnings) ...
    with pytest.raises(ValidationError) as exc:  # ... publishing is not
        workflow_publish(workflow=wf)
    assert set(_errors(exc)) == {"trigger_config", "goal_event"}
    wf.refresh_from_db()
    assert wf.status == "draft" and wf.current_version is None

    wf.trigger_config, wf.goal_event = {"event": "webinar_attended"}, "demo_requested"
    wf.save()
    EventType.objects.filter(name="webinar_attended").update(is_active=False)
    assert "inactive" in workflow_never_fires(workflow=wf)["trigger_config"][0]
    EventType.objects.filter(name="webinar_attended").update(is_active=True)
    # A wait for an event that never comes only times out: reported, not refused.
    workflow_step_add(workflow=wf, step_type="wait_until", data={"condition": "score > 5", "timeout_hours": 1},
                      paths={"timeout_next": "e1"})
    steps = wf.definition["steps"]
    steps["wait_until1"]["event"] = "never_happens"
    Workflow.objects.filter(pk=wf.pk).update(definition=wf.definition)
    assert list(workflow_never_fires(workflow=wf)) == ["definition"]
    assert workflow_publish(workflow=wf).number == 1


def test_form_and_stage_triggers_that_can_never_fire(make_workflow):
    wf = make_workflow(email_flow(1), publish=False, trigger="form", trigger_config={"form": "ebok"})
    assert "The form 'ebok' does not exist" in workflow_never_fires(workflow=wf)["trigger_config"][0]
    FormFactory(key="ebok", is_active=False)
    assert "is inactive" in workflow_never_fires(workflow=wf)["trigger_config"][0]
    with pytest.raises(ValidationError):
        workflow_publish(workflow=wf)
    wf.trigger, wf.trigger_config = "stage", {"stage": "vip"}
    assert "No active lifecycle stage 'vip'" in workflow_never_fires(workflow=wf)["trigger_config"][0]
    wf.trigger_config = {"stage": "mql"}
    assert workflow_never_fires(workflow=wf) == {}


def test_a_workflow_is_active_only_through_publish(make_workflow):
    wf = make_workflow(email_flow(1), publish=False)
    wf.status = Workflow.Status.ACTIVE
    with pytest.raises(ValidationError) as exc:
        workflow_save(workflow=wf)
    assert "only once published" in _errors(exc)["status"][0]
    Workflow.objects.filter(pk=wf.pk).update(status="active")  # a row an older admin left so
    workflow_publish(workflow=Workflow.objects.get(pk=wf.pk))
    wf.refresh_from_db()
    assert wf.status == "active" and wf.current_version.number == 1


def test_diagram_draws_every_step_and_path_with_labels_and_escapes_text(make_workflow):
    wf = make_workflow(email_flow(1), publish=False)
    workflow_step_add(workflow=wf, step_type="branch", data={"condition": "score >= 5"}, after="e1")
    workflow_step_edit(workflow=wf, key="e1", data={"subject": "<script>alert(1)</script>", "body": "b"})
    workflow_step_add(workflow=wf, step_type="split", data={"percent": 25}, after="branch1", path="yes")
    svg = str(workflow_diagram(wf.definition, link=lambda key: f"/edit/{key}/"))
    assert svg.startswith("<svg") and svg.count('class="nurture-node"') == 4
    assert svg.count('class="nurture-edge"') == 5  # e1→branch, branch yes→split, branch no→end, split a/b→end
    assert ">Yes<" in svg and ">No<" in svg and ">A (25%)<" in svg and ">B (75%)<" in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'href="/edit/branch1/"' in svg
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    assert str(workflow_diagram({})) == ""


def test_a_send_email_step_names_a_template_instead_of_its_own_text(make_workflow):
    from tests.nurture.test_email_templates import make_template

    template = make_template(name="Ebook", subject="Your ebook, {{first_name|there}}")
    wf = make_workflow(email_flow(1), publish=False)
    key = workflow_step_add(workflow=wf, step_type="send_email", data={"template": template.pk}, after="e1")
    wf.refresh_from_db()
    assert wf.definition["steps"][key] == {"type": "send_email", "template": template.pk, "next": "end"}
    assert step_summary(wf.definition["steps"][key], {str(template.pk): template.content()}) \
        == 'Send email "Your ebook, {{first_name|there}}"'

    # A template with typed text beside it, an unknown one, a non-id: refused, naming the template.
    for data, words in [({"template": template.pk, "subject": "Mine"}, "leave subject empty"),
                        ({"template": 999999}, "No email template with id 999999"),
                        ({"template": "Ebook"}, "an integer")]:
        with pytest.raises(ValidationError) as exc:
            workflow_step_edit(workflow=wf, key=key, data=data)
        assert words in " ".join(_errors(exc)["template"])
    # Back to typed text: the template key goes.
    workflow_step_edit(workflow=wf, key=key, data={"subject": "Typed", "body": "B"})
    wf.refresh_from_db()
    assert wf.definition["steps"][key] == {"type": "send_email", "subject": "Typed", "body": "B", "next": "end"}


def test_a_send_email_step_picks_an_email_topic(make_workflow):
    from martech.models import SubscriptionType

    SubscriptionType.objects.create(key="product-news", name="Product news")
    SubscriptionType.objects.create(key="sms-offers", name="SMS offers", channel="sms")
    wf = make_workflow(email_flow(1), publish=False)
    key = workflow_step_add(workflow=wf, step_type="send_email", after="e1",
                            data={"subject": "S", "body": "B", "topic": "product-news"})
    wf.refresh_from_db()
    assert wf.definition["steps"][key]["topic"] == "product-news"
    for topic in ("sms-offers", "ghost"):
        with pytest.raises(ValidationError) as exc:
            workflow_step_edit(workflow=wf, key=key, data={"subject": "S", "body": "B", "topic": topic})
        assert f"No email subscription topic {topic!r}" in " ".join(_errors(exc)["topic"])
